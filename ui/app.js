// The status page: polls this node's /v1/status, /v1/members and
// /metrics once a second, and follows /v1/feed over SSE for the newest
// entries. Everything comes from the node that served the page; no
// other origin is asked (paxoslog sends no CORS headers).
'use strict';

const KEEP = 20;      // entries shown
const POLL_MS = 1000; // status refresh
const WAIT_MS = 3000; // a poll that takes longer failed: the node is hung or gone
const $ = (id) => document.getElementById(id);

let prev = null;   // the previous poll: {t, last, fsync}
const rates = [];  // appends/s of the last 60 polls
let feed = null;
let pending = [];  // feed lines not drawn yet: the newest KEEP at most
let drawn = 0;     // the highest index on the list

async function getJSON(path) {
  const r = await fetch(path, { cache: 'no-store', signal: AbortSignal.timeout(WAIT_MS) });
  if (!r.ok) throw new Error(path + ': HTTP ' + r.status);
  return r.json();
}

// fsyncHistograms reads paxoslog_fsync_duration_seconds from the
// Prometheus text: per journal, its sum, count and cumulative buckets.
function fsyncHistograms(text) {
  const out = {};
  const re = /^paxoslog_fsync_duration_seconds_(bucket|sum|count)\{([^}]*)\} (\S+)$/gm;
  for (const m of text.matchAll(re)) {
    const labels = Object.fromEntries([...m[2].matchAll(/(\w+)="([^"]*)"/g)].map((l) => [l[1], l[2]]));
    const h = (out[labels.journal] ??= { sum: 0, count: 0, buckets: [] });
    const v = Number(m[3]);
    if (m[1] === 'bucket') h.buckets.push([Number(labels.le), v]);
    else h[m[1]] = v;
  }
  return out;
}

function ms(seconds) {
  const v = seconds * 1000;
  return (v < 10 ? v.toFixed(2) : v.toFixed(0)) + ' ms';
}

// fsyncText: mean and p99 (a bucket's upper bound) of the syncs since
// the previous poll; nothing until there is one.
function fsyncText(cur, old, havePrev) {
  if (!havePrev) return ['…', ''];
  if (!cur) return ['none yet', ''];
  const base = old || { sum: 0, count: 0, buckets: [] };
  const n = cur.count - base.count;
  if (n <= 0) return ['idle', ''];
  const mean = (cur.sum - base.sum) / n;
  let p99 = '';
  for (const [le, c] of cur.buckets) {
    const before = (base.buckets.find((b) => b[0] === le) || [le, 0])[1];
    if (c - before >= 0.99 * n) { p99 = isFinite(le) ? 'p99 ≤ ' + ms(le) : 'p99 > ' + ms(cur.buckets.at(-2)[0]); break; }
  }
  return [ms(mean), p99 + ' · ' + n.toLocaleString('en') + ' syncs'];
}

function bytes(n) {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : n) + ' ' + units[i];
}

function cell(tr, text, href) {
  const td = tr.insertCell();
  if (href) {
    const a = document.createElement('a');
    a.href = href; a.textContent = text;
    td.append(a);
  } else {
    td.textContent = text;
  }
}

function drawMembers(st, mem) {
  const body = $('members').tBodies[0];
  body.replaceChildren();
  const peers = new Map((st.peers || []).map((p) => [p.id, p]));
  let leaderURL = '';
  for (const m of mem.members) {
    const tr = body.insertRow();
    tr.id = 'member-' + m.id;
    if (m.id === st.id) tr.className = 'self';
    if (m.id === st.leader) leaderURL = m.url;
    cell(tr, String(m.id));
    cell(tr, m.url, m.url + '/');
    cell(tr, m.id === st.leader ? 'leader' : m.voter ? 'follower' : 'non-voter');
    const p = peers.get(m.id);
    if (st.is_leader && m.id === st.id) {
      cell(tr, String(st.applied_slot)); cell(tr, '0'); cell(tr, '—');
    } else if (st.is_leader && p) {
      cell(tr, String(p.applied_slot));
      cell(tr, String(p.lag_slots));
      cell(tr, p.last_contact_seconds_ago < 0 ? 'not since this leadership began' : p.last_contact_seconds_ago.toFixed(2) + ' s ago');
    } else {
      cell(tr, m.id === st.id ? String(st.applied_slot) : '—'); cell(tr, '—'); cell(tr, '—');
    }
  }
  const note = $('members-note');
  note.replaceChildren();
  if (!st.is_leader && leaderURL) {
    note.append('Lag and last contact are tracked by the leader: ');
    const a = document.createElement('a');
    a.href = leaderURL + '/'; a.textContent = 'open its page';
    note.append(a, '.');
  } else if (!st.is_leader) {
    note.textContent = 'No leader is known right now.';
  }
}

function drawRate(rate) {
  rates.push(rate);
  if (rates.length > 60) rates.shift();
  $('rate').textContent = Math.round(rate).toLocaleString('en');
  const max = Math.max(1, ...rates);
  const pts = rates.map((r, i) => `${(i * 120) / 59},${24 - (r / max) * 22 - 1}`);
  $('spark').querySelector('polyline').setAttribute('points', pts.join(' '));
}

function draw(st, mem, fsync) {
  const now = performance.now();
  $('node').textContent = 'node ' + st.id;
  $('cluster').textContent = st.cluster ? 'cluster ' + st.cluster : 'no cluster identity yet';
  $('leader').textContent = st.leader ? 'node ' + st.leader + (st.is_leader ? ' (this one)' : '') : 'none known';
  $('ballot').textContent = st.ballot;
  $('state').textContent = st.state + (st.member ? '' : ', not a member');
  $('indices').textContent = st.first + ' … ' + st.last;
  $('slots').textContent = st.applied_slot + ' / ' + st.known_commit_slot;
  $('disk').textContent = bytes(st.disk_bytes);
  if (prev) drawRate(Math.max(0, (st.last - prev.last) / ((now - prev.t) / 1000)));
  for (const j of ['acceptor', 'log']) {
    const [mean, p99] = fsyncText(fsync[j], prev && prev.fsync[j], !!prev);
    $('fsync-' + j).textContent = mean;
    $('fsync-' + j + '-p99').textContent = p99;
  }
  const alarm = $('alarm');
  alarm.hidden = !st.alarm;
  if (st.alarm) alarm.textContent = `This node's log and node ${st.alarm.peer}'s differ at index ${st.alarm.index}: ${st.alarm.message}`;
  drawMembers(st, mem);
  if (st.last < drawn) { // a node that came back with an empty log
    drawn = 0;
    $('entries').replaceChildren();
  }
  prev = { t: now, last: st.last, fsync };
  if (!feed) openFeed(st);
}

async function poll() {
  try {
    const [st, mem, metrics] = await Promise.all([
      getJSON('/v1/status'), getJSON('/v1/members'),
      fetch('/metrics', { cache: 'no-store', signal: AbortSignal.timeout(WAIT_MS) }).then((r) => r.text()),
    ]);
    draw(st, mem, fsyncHistograms(metrics));
    $('conn').textContent = 'live'; $('conn').className = 'pill ok';
  } catch (e) {
    $('conn').textContent = 'unreachable'; $('conn').className = 'pill bad';
    prev = null;
  }
  setTimeout(poll, POLL_MS);
}

// openFeed follows the feed from a little before the end. EventSource
// reconnects by itself with Last-Event-ID; it gives up only on an answer
// such as 410 (the entries were dropped by retention), and then the next
// poll opens a new feed near the end again.
function openFeed(st) {
  const from = Math.max(st.first, st.last - KEEP + 1, 1);
  feed = new EventSource('/v1/feed?from=' + from);
  $('feed-state').textContent = '';
  feed.onopen = () => { $('feed-state').textContent = ''; };
  feed.onmessage = (e) => {
    pending.push(e.data);
    if (pending.length > KEEP) pending.shift();
  };
  feed.onerror = () => {
    if (feed.readyState === EventSource.CLOSED) { feed = null; }
    $('feed-state').textContent = '(reconnecting)';
  };
}

// drawEntries adds what the feed brought since the last frame: at most
// KEEP of them, however fast entries arrive.
function drawEntries() {
  if (pending.length) {
    const list = $('entries');
    for (const line of pending) {
      // A feed line is {"index":i,"data":<value as appended, on one line>}.
      const cut = line.indexOf(',"data":');
      const index = Number(line.slice('{"index":'.length, cut));
      if (index <= drawn) continue; // a reopened feed starts before the newest shown
      drawn = index;
      const li = document.createElement('li');
      li.className = 'new';
      const idx = document.createElement('span');
      idx.className = 'idx';
      idx.textContent = String(index);
      const data = document.createElement('span');
      data.className = 'data';
      const raw = line.slice(cut + ',"data":'.length, -1);
      data.textContent = raw.length > 400 ? raw.slice(0, 400) + '…' : raw;
      data.title = raw.slice(0, 4000);
      li.append(idx, data);
      list.prepend(li);
    }
    while (list.children.length > KEEP) list.lastElementChild.remove();
    pending = [];
  }
  setTimeout(drawEntries, 200);
}

poll();
drawEntries();
