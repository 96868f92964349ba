//! Reader for OR-Library generalized assignment problem (GAP) files and
//! conversion into placement models (agent = region, job = one-replica unit).

use std::collections::BTreeMap;

use thiserror::Error;

use crate::model::{Model, Override, Provider, Region, Unit};

/// One GAP instance: `m` agents, `n` jobs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GapInstance {
    /// Number of agents.
    pub agents: usize,
    /// Number of jobs.
    pub jobs: usize,
    /// `cost[i][j]`: cost of job `j` on agent `i`.
    pub cost: Vec<Vec<i64>>,
    /// `demand[i][j]`: resource used by job `j` on agent `i`.
    pub demand: Vec<Vec<i64>>,
    /// Capacity of each agent.
    pub capacity: Vec<i64>,
}

/// Error reading a GAP file.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum GapError {
    /// A token is not an integer.
    #[error("token {index} (`{token}`) is not an integer")]
    NotANumber {
        /// Index of the token in the file.
        index: usize,
        /// The token.
        token: String,
    },
    /// The file ended early.
    #[error("unexpected end of file while reading {what}")]
    UnexpectedEof {
        /// What was being read.
        what: &'static str,
    },
    /// A size or value is out of range.
    #[error("invalid {what}: {value}")]
    Invalid {
        /// What was read.
        what: &'static str,
        /// The value.
        value: i64,
    },
    /// Data follows the last instance.
    #[error("{0} unexpected trailing token(s)")]
    Trailing(usize),
}

/// Parses the text of an OR-Library GAP file (all instances it holds).
pub fn parse_gap(text: &str) -> Result<Vec<GapInstance>, GapError> {
    let mut toks = text.split_whitespace().enumerate();
    let mut next = |what: &'static str| -> Result<i64, GapError> {
        let (index, t) = toks.next().ok_or(GapError::UnexpectedEof { what })?;
        t.parse::<i64>().map_err(|_| GapError::NotANumber {
            index,
            token: t.to_string(),
        })
    };
    let p = next("instance count")?;
    if !(0..=10_000).contains(&p) {
        return Err(GapError::Invalid {
            what: "instance count",
            value: p,
        });
    }
    let mut out = Vec::new();
    for _ in 0..p {
        let m = next("agent count")?;
        let n = next("job count")?;
        if !(1..=100_000).contains(&m) || !(1..=1_000_000).contains(&n) || m * n > 50_000_000 {
            return Err(GapError::Invalid {
                what: "instance size",
                value: m * n,
            });
        }
        let (m, n) = (m as usize, n as usize);
        let mut cost = vec![vec![0; n]; m];
        for row in &mut cost {
            for c in row.iter_mut() {
                *c = next("cost")?;
            }
        }
        let mut demand = vec![vec![0; n]; m];
        for row in &mut demand {
            for c in row.iter_mut() {
                *c = next("resource")?;
                if *c < 0 {
                    return Err(GapError::Invalid {
                        what: "resource",
                        value: *c,
                    });
                }
            }
        }
        let mut capacity = vec![0; m];
        for c in &mut capacity {
            *c = next("capacity")?;
            if *c < 0 {
                return Err(GapError::Invalid {
                    what: "capacity",
                    value: *c,
                });
            }
        }
        out.push(GapInstance {
            agents: m,
            jobs: n,
            cost,
            demand,
            capacity,
        });
    }
    let rest = toks.count();
    if rest > 0 {
        return Err(GapError::Trailing(rest));
    }
    Ok(out)
}

impl GapInstance {
    /// Converts the instance into a placement model (minimisation): one
    /// provider `gap`, one region `a<i>` per agent with capacity `r`, one unit
    /// `j<j>` per job, and a cost and demand override per (job, agent).
    /// Negative costs are not allowed by the model and are rejected later by
    /// validation.
    pub fn to_model(&self) -> Model {
        let regions = (0..self.agents)
            .map(|i| Region {
                id: format!("a{}", i + 1),
                capacity: BTreeMap::from([("r".to_string(), self.capacity[i] as f64)]),
                ..Region::default()
            })
            .collect();
        let units = (0..self.jobs)
            .map(|j| Unit {
                id: format!("j{}", j + 1),
                replicas: 1,
                ..Unit::default()
            })
            .collect();
        let mut overrides = Vec::with_capacity(self.agents * self.jobs);
        for j in 0..self.jobs {
            for i in 0..self.agents {
                overrides.push(Override {
                    unit: format!("j{}", j + 1),
                    region: format!("a{}", i + 1),
                    cost: Some(self.cost[i][j] as f64),
                    demand: Some(BTreeMap::from([(
                        "r".to_string(),
                        self.demand[i][j] as f64,
                    )])),
                });
            }
        }
        Model {
            dimensions: vec!["r".to_string()],
            providers: vec![Provider {
                id: "gap".into(),
                regions,
                ..Provider::default()
            }],
            units,
            overrides,
            ..Model::default()
        }
    }

    /// Cost of an assignment given as the agent index of each job, or `None`
    /// if it is infeasible (used to cross-check the solver in tests).
    pub fn assignment_cost(&self, agent_of_job: &[usize]) -> Option<i64> {
        if agent_of_job.len() != self.jobs {
            return None;
        }
        let mut load = vec![0i64; self.agents];
        let mut cost = 0;
        for (j, &i) in agent_of_job.iter().enumerate() {
            if i >= self.agents {
                return None;
            }
            load[i] += self.demand[i][j];
            cost += self.cost[i][j];
        }
        load.iter()
            .zip(&self.capacity)
            .all(|(l, c)| l <= c)
            .then_some(cost)
    }
}
