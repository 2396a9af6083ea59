//! Lanes as an operator sees them: each lane's shard, node and state, its rows done against
//! its shard's estimate and its time left, and the same summed per node (what `status`,
//! `show` and the dashboard print for a migration of a Citus distributed table).

use serde::Serialize;

use super::Sluicegate;
use crate::error::Result;
use crate::ident::TableName;
use crate::model::{Job, Migration};
use crate::status::JobStatus;

/// How long a node may take to give a lane's row estimate.
const NODE_ANSWER_WITHIN: std::time::Duration = std::time::Duration::from_secs(1);

/// Where a lane is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LaneState {
    /// Every key handed out and every job of it succeeded.
    Done,
    /// A job runs in it now.
    Running,
    /// Its node is down or unhealthy: no job starts in it until the re-check.
    Held,
    /// Keys left (or a job to take up again), waiting for a loop.
    Waiting,
}

/// One lane's progress.
#[derive(Debug, Clone, Serialize)]
pub struct LaneProgress {
    /// Its number.
    pub lane: i32,
    /// Citus's shard id.
    pub shard_id: i64,
    /// The shard's own table.
    pub relation: String,
    /// The node its placement is on.
    pub node: String,
    /// Where it is.
    pub state: LaneState,
    /// Rows its jobs wrote.
    pub rows_done: i64,
    /// Rows in its shard (the node's estimate; `None` when the node cannot be asked).
    pub rows_estimate: Option<i64>,
    /// Its jobs that succeeded, of all its jobs.
    pub jobs_done: i64,
    /// Its jobs.
    pub jobs: i64,
    /// Time left at the rate its own jobs ran, while it has keys left.
    pub eta_seconds: Option<f64>,
    /// Why it is held, while it is.
    pub hold_reason: Option<String>,
}

/// A node's lanes, summed.
#[derive(Debug, Clone, Serialize)]
pub struct NodeProgress {
    /// `host:port`.
    pub node: String,
    /// Its lanes.
    pub lanes: usize,
    /// Of which done.
    pub done: usize,
    /// Of which running now.
    pub running: usize,
    /// Of which held.
    pub held: usize,
    /// Rows written on it.
    pub rows_done: i64,
    /// Rows in its shards (estimated).
    pub rows_estimate: Option<i64>,
    /// Its longest lane's time left.
    pub eta_seconds: Option<f64>,
    /// Why its lanes are held, while they are.
    pub hold_reason: Option<String>,
}

impl Sluicegate {
    /// The progress of each lane of `m` (none for a migration that does not run in lanes).
    pub async fn lanes(&self, m: &Migration) -> Result<Vec<LaneProgress>> {
        let lanes = self.store.lane_list(m.id).await?;
        if lanes.is_empty() {
            return Ok(Vec::new());
        }
        let jobs = self.jobs(m, None).await?;
        let now = chrono::Utc::now();
        let mut silent: std::collections::HashSet<String> = Default::default();
        let mut out = Vec::with_capacity(lanes.len());
        for lane in lanes {
            let mine: Vec<&Job> = jobs.iter().filter(|j| j.lane == Some(lane.lane)).collect();
            let rows_done: i64 = mine.iter().map(|j| j.rows_affected).sum();
            let jobs_done = mine
                .iter()
                .filter(|j| j.status == JobStatus::Succeeded)
                .count() as i64;
            let unfinished = mine.iter().any(|j| j.status != JobStatus::Succeeded);
            let state = if lane.running_job.is_some() {
                LaneState::Running
            } else if lane.is_held(now) {
                LaneState::Held
            } else if lane.next_start.is_none() && !unfinished {
                LaneState::Done
            } else {
                LaneState::Waiting
            };
            // A node that does not answer at once is not asked again here: `status` must
            // not wait on a node that is down.
            let rows_estimate = match (
                TableName::parse(&lane.relation),
                silent.contains(&lane.node),
            ) {
                (Ok(shard), false) => {
                    let asked = async {
                        let node = self.node_target(&lane.node).await?;
                        node.row_estimate(&shard).await
                    };
                    match tokio::time::timeout(NODE_ANSWER_WITHIN, asked).await {
                        Ok(Ok(rows)) => rows,
                        _ => {
                            silent.insert(lane.node.clone());
                            None
                        }
                    }
                }
                _ => None,
            };
            // Its own pace: rows over the time its succeeded jobs ran.
            let ran_ms: i64 = mine
                .iter()
                .filter(|j| j.status == JobStatus::Succeeded)
                .filter_map(|j| Some((j.finished_at? - j.started_at?).num_milliseconds()))
                .sum();
            let eta_seconds = match (state, rows_estimate) {
                (LaneState::Done, _) => Some(0.0),
                (_, Some(total)) if ran_ms > 0 && rows_done > 0 => {
                    let rate = rows_done as f64 / (ran_ms as f64 / 1000.0);
                    Some(((total - rows_done).max(0)) as f64 / rate)
                }
                _ => None,
            };
            out.push(LaneProgress {
                lane: lane.lane,
                shard_id: lane.shard_id,
                relation: lane.relation,
                node: lane.node,
                state,
                rows_done,
                rows_estimate,
                jobs_done,
                jobs: mine.len() as i64,
                eta_seconds,
                hold_reason: lane.hold_reason.filter(|_| state == LaneState::Held),
            });
        }
        Ok(out)
    }
}

/// `lanes` summed per node, in the order nodes first appear.
pub fn lanes_by_node(lanes: &[LaneProgress]) -> Vec<NodeProgress> {
    let mut nodes: Vec<NodeProgress> = Vec::new();
    for lane in lanes {
        let i = match nodes.iter().position(|n| n.node == lane.node) {
            Some(i) => i,
            None => {
                nodes.push(NodeProgress {
                    node: lane.node.clone(),
                    lanes: 0,
                    done: 0,
                    running: 0,
                    held: 0,
                    rows_done: 0,
                    rows_estimate: Some(0),
                    eta_seconds: Some(0.0),
                    hold_reason: None,
                });
                nodes.len() - 1
            }
        };
        let n = &mut nodes[i];
        n.lanes += 1;
        match lane.state {
            LaneState::Done => n.done += 1,
            LaneState::Running => n.running += 1,
            LaneState::Held => n.held += 1,
            LaneState::Waiting => {}
        }
        n.rows_done += lane.rows_done;
        n.rows_estimate = n.rows_estimate.zip(lane.rows_estimate).map(|(a, b)| a + b);
        n.eta_seconds = n.eta_seconds.zip(lane.eta_seconds).map(|(a, b)| a.max(b));
        if n.hold_reason.is_none() {
            n.hold_reason = lane.hold_reason.clone();
        }
    }
    nodes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lane(n: i32, node: &str, state: LaneState, rows: i64) -> LaneProgress {
        LaneProgress {
            lane: n,
            shard_id: 100 + n as i64,
            relation: format!("public.t_{n}"),
            node: node.into(),
            state,
            rows_done: rows,
            rows_estimate: Some(100),
            jobs_done: 1,
            jobs: 1,
            eta_seconds: Some(f64::from(n)),
            hold_reason: (state == LaneState::Held).then(|| format!("node {node}: down")),
        }
    }

    #[test]
    fn lanes_sum_up_per_node() {
        let nodes = lanes_by_node(&[
            lane(0, "a:1", LaneState::Done, 100),
            lane(1, "b:1", LaneState::Held, 10),
            lane(2, "a:1", LaneState::Running, 40),
            lane(3, "b:1", LaneState::Held, 0),
        ]);
        assert_eq!(nodes.len(), 2);
        let a = &nodes[0];
        assert_eq!(
            (
                a.node.as_str(),
                a.lanes,
                a.done,
                a.running,
                a.held,
                a.rows_done
            ),
            ("a:1", 2, 1, 1, 0, 140)
        );
        assert_eq!(
            (a.rows_estimate, a.eta_seconds, a.hold_reason.clone()),
            (Some(200), Some(2.0), None)
        );
        let b = &nodes[1];
        assert_eq!(
            (b.held, b.hold_reason.as_deref()),
            (2, Some("node b:1: down"))
        );
    }
}
