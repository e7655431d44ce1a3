package main

import (
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// metrics are one node's Prometheus series, on a registry of its own so
// that several nodes can live in one process (the tests do).
type metrics struct {
	reg             *prometheus.Registry
	appendLatency   prometheus.Histogram
	appendErrors    prometheus.Counter
	fsync           *prometheus.HistogramVec
	lastIndex       prometheus.Gauge
	firstIndex      prometheus.Gauge
	isLeader        prometheus.Gauge
	leader          prometheus.Gauge
	leaderChanges   prometheus.Counter
	peerErrors      *prometheus.CounterVec
	idempotentHits  prometheus.Counter
	feedSubscribers prometheus.Gauge
	readLatency     prometheus.Histogram
	batchSize       prometheus.Histogram
	appliedSlot     prometheus.Gauge
	commitSlot      prometheus.Gauge
	ballotRound     prometheus.Gauge
	peerLatency     *prometheus.HistogramVec
	repairs         *prometheus.CounterVec
	recovering      prometheus.Gauge
	replicaAlarm    prometheus.Gauge
	members         prometheus.Gauge
	voters          prometheus.Gauge
	memberChanges   prometheus.Counter
	prefixInstalls  prometheus.Counter
}

func newMetrics(n *Node) *metrics {
	m := &metrics{
		reg: prometheus.NewRegistry(),
		appendLatency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "paxoslog_append_duration_seconds",
			Help:    "Time from an append's arrival to its acknowledgement.",
			Buckets: prometheus.ExponentialBuckets(0.0002, 2, 16),
		}),
		appendErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "paxoslog_append_failures_total",
			Help: "Appends that ended without an index (timeout or shutdown).",
		}),
		fsync: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "paxoslog_fsync_duration_seconds",
			Help:    "Duration of each fsync, by journal (acceptor or log).",
			Buckets: prometheus.ExponentialBuckets(0.00005, 2, 16),
		}, []string{"journal"}),
		firstIndex: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "paxoslog_first_index",
			Help: "First index retained on this node.",
		}),
		lastIndex: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "paxoslog_last_index",
			Help: "Index of the last entry applied on this node.",
		}),
		isLeader: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "paxoslog_is_leader",
			Help: "1 while this node leads, else 0.",
		}),
		leader: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "paxoslog_leader_id",
			Help: "Id of the node this node believes leads; 0 while unknown.",
		}),
		leaderChanges: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "paxoslog_leader_changes_total",
			Help: "Leaderships this node has seen begin.",
		}),
		peerErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "paxoslog_peer_request_errors_total",
			Help: "Peer requests that failed, by peer and method.",
		}, []string{"peer", "method"}),
		idempotentHits: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "paxoslog_idempotent_hits_total",
			Help: "Appends answered with the index an earlier append with the same Idempotency-Key got.",
		}),
		feedSubscribers: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "paxoslog_feed_subscribers",
			Help: "Open /v1/feed streams on this node.",
		}),
	}
	m.readLatency = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "paxoslog_read_barrier_duration_seconds",
		Help:    "Time a linearizable read waits to confirm it has every chosen entry.",
		Buckets: prometheus.ExponentialBuckets(0.0001, 2, 16),
	})
	m.batchSize = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "paxoslog_batch_entries",
		Help:    "Entries per slot the leader proposes (each entry of a batch append counts).",
		Buckets: prometheus.ExponentialBuckets(1, 2, 17),
	})
	m.appliedSlot = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "paxoslog_applied_slot",
		Help: "Last Paxos slot applied to this node's log.",
	})
	m.commitSlot = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "paxoslog_commit_slot",
		Help: "Highest Paxos slot this node knows is chosen.",
	})
	m.ballotRound = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "paxoslog_ballot_round",
		Help: "Round of the highest ballot this node's acceptor has promised.",
	})
	m.peerLatency = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "paxoslog_peer_request_duration_seconds",
		Help:    "Duration of peer requests that got an answer, by peer and method.",
		Buckets: prometheus.ExponentialBuckets(0.0001, 2, 16),
	}, []string{"peer", "method"})
	m.repairs = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "paxoslog_repairs_total",
		Help: "Damage to this node's files repaired (from its peers, or for dedup records from the client log or memory), by journal (acceptor, log or dedup).",
	}, []string{"journal"})
	m.recovering = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "paxoslog_recovering",
		Help: "1 while this node rebuilds its acceptor state from its peers (it does not vote meanwhile), else 0.",
	})
	m.replicaAlarm = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "paxoslog_replica_alarm",
		Help: "Peers whose log differs from this node's at an index both hold (0 while every check agrees).",
	})
	m.members = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "paxoslog_members",
		Help: "Members in the membership this node goes by, voters and non-voters.",
	})
	m.voters = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "paxoslog_voters",
		Help: "Voters in the membership this node goes by.",
	})
	m.memberChanges = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "paxoslog_membership_changes_total",
		Help: "Membership changes this node has applied.",
	})
	m.prefixInstalls = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "paxoslog_prefix_installs_total",
		Help: "Times this node caught up past its peers' retention by installing a peer's compacted prefix and dedup state.",
	})
	dedupKeys := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "paxoslog_dedup_identities",
		Help: "Identities (Idempotency-Keys, or entry ids) in the dedup window: one per append (a batch append is one) whose first index is among the last DedupWindow.",
	}, func() float64 {
		if n.learner == nil {
			return 0
		}
		n.learner.mu.Lock()
		defer n.learner.mu.Unlock()
		return float64(n.learner.recent.identities())
	})
	m.reg.MustRegister(m.prefixInstalls, dedupKeys)
	m.reg.MustRegister(m.repairs, m.recovering, m.replicaAlarm, m.members, m.voters, m.memberChanges, peerCollector{n: n,
		lag: prometheus.NewDesc("paxoslog_peer_lag_slots",
			"On the leader: slots each peer's applied slot is behind the commit point, by peer id and whether it votes (a non-voter catching up is promoted within 64).",
			[]string{"peer", "voter"}, nil),
		change: prometheus.NewDesc("paxoslog_membership_change_in_progress",
			"1 while this node leads and a membership change it proposed is not chosen yet, else 0.", nil, nil),
	})
	m.reg.MustRegister(m.readLatency, m.batchSize, m.appliedSlot, m.commitSlot, m.ballotRound, m.peerLatency)
	m.reg.MustRegister(m.idempotentHits, m.firstIndex, m.feedSubscribers, m.appendLatency, m.appendErrors, m.fsync, m.lastIndex,
		m.isLeader, m.leader, m.leaderChanges, m.peerErrors,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// peerCollector reports, when scraped, how far each peer is behind the
// leader (a non-voter's progress among them) and whether a membership
// change is in flight: read from the leader's state as it is then.
type peerCollector struct {
	n           *Node
	lag, change *prometheus.Desc
}

func (c peerCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.lag
	ch <- c.change
}

func (c peerCollector) Collect(ch chan<- prometheus.Metric) {
	p := c.n.proposer
	if p == nil {
		return // not started yet
	}
	change := 0.0
	if p.changeInFlight() != nil {
		change = 1
	}
	ch <- prometheus.MustNewConstMetric(c.change, prometheus.GaugeValue, change)
	if _, _, leading := p.leaderInfo(); !leading {
		return
	}
	for _, ps := range p.peers() {
		ch <- prometheus.MustNewConstMetric(c.lag, prometheus.GaugeValue, float64(ps.Lag),
			strconv.FormatUint(uint64(ps.ID), 10), strconv.FormatBool(ps.Voter))
	}
}
