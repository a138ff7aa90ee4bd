//! A simulated cluster for the model check: k API servers, each with its deployed config, and stored objects
//! tagged with the unit that wrote them. Steps run the way the executor runs them (rolling, one server at a
//! time, recording stage and done phases); between any two moments clients write through random servers.
//! Servers with automatic reload get their file without a restart and load it at a moment of their own choosing
//! (random: before or during the executor's wait, or after an interruption); the executor's wait ends when every
//! one of them has loaded it.

use super::json_config_hash;
use super::sequence::ALL_PHASES;
use super::stage::Stage;
use super::types::*;
use super::units::{RuleKey, Rules, UnitId, effective};
use crate::config::encryption::EncryptionConfiguration;
use crate::state::atrest::DeployProgress;
use std::collections::BTreeMap;

/// Concrete resources the simulated clients write.
pub const RESOURCES: [&str; 5] = [
    "secrets",
    "configmaps",
    "pods",
    "deployments.apps",
    "widgets.example.com",
];

/// A small deterministic RNG (xorshift64*), seeded by proptest.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x9e37_79b9_7f4a_7c15 | 1)
    }
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
    pub fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

/// How clients behave between moments.
#[derive(Clone, Debug)]
pub enum Chaos {
    /// A few random writes and updates through random servers.
    Random(Rng),
    /// Every server writes one new object of every resource (deterministic; makes a broken plan fail).
    EveryServerWrites,
}

#[derive(Clone, Debug)]
pub struct Server {
    pub name: String,
    /// The config the server runs with (what it reads and writes with).
    pub config: Option<EncryptionConfiguration>,
    /// Runs with `--encryption-provider-config-automatic-reload=true`.
    pub reload: bool,
    /// A file written to a reloading server that it has not loaded yet.
    pub pending: Option<Option<EncryptionConfiguration>>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Object {
    /// Stable across deletes of other objects (a rewrite walks a snapshot of these, as the real one walks a
    /// list: an object deleted meanwhile is gone, never a reason to skip another).
    pub id: u64,
    pub resource: String,
    pub unit: UnitId,
}

#[derive(Debug, PartialEq)]
pub enum Outcome {
    Completed,
    Interrupted,
    VerifyFailed(String),
    /// The invariant broke: some server cannot read some stored object.
    Violation(String),
}

/// The moments a run has had, and after how many it is cut off (a crash at that moment).
struct Clock {
    moments: usize,
    stop_after: Option<usize>,
}

#[derive(Clone, Debug)]
pub struct Cluster {
    pub servers: Vec<Server>,
    pub objects: Vec<Object>,
    /// What the state says is deployed (updated when a transition completes).
    pub current: Target,
    pub record: Option<InProgress>,
    /// cluster.yml asks for automatic reload: every server restarted or recreated with a config comes back with it.
    pub reload_wanted: bool,
    /// Mutation for the model check: a reload deploy does not wait for the servers to load the file; the first
    /// node loads at once, the others only much later (a fast and a slow poller).
    pub reload_without_wait: bool,
    /// Failures of the executor's own steps, drawn from this RNG when set: a node that fails its health gate
    /// after its change (rolled back: its old config, the run stops), and a crash after a node's change but
    /// before the executor recorded it (the node runs the new config, the record does not say so). A crash in
    /// the middle of a container recreate ends as one of those: the next run puts the old container back
    /// (old config) or keeps the new one if it serves (new config, unrecorded).
    pub faults: Option<Rng>,
    /// Mutation for the model check: a deploy's config is recorded as deployed only once every node has it
    /// (without the executor's `record_ahead`).
    pub record_deploys_late: bool,
    next_id: u64,
    /// Servers ever added (names are never reused) and keys `rke encrypt rotate-key` ever generated.
    servers_added: usize,
    rke_rotations: usize,
}

fn units_for(config: &Option<EncryptionConfiguration>, resource: &str) -> Vec<UnitId> {
    let rules = config.as_ref().map(Rules::from_config);
    effective(rules.as_ref(), &RuleKey::parse(resource))
        .iter()
        .map(|u| u.id())
        .collect()
}

impl Cluster {
    /// `k` servers all on `current`, with a few objects per resource written by it.
    pub fn new(k: usize, current: Target) -> Cluster {
        let servers = (0..k).map(|i| Server {
            name: format!("cp{}", i + 1),
            config: current.config().cloned(),
            reload: false,
            pending: None,
        });
        let mut cluster = Cluster {
            servers: servers.collect(),
            objects: Vec::new(),
            current,
            record: None,
            reload_wanted: false,
            reload_without_wait: false,
            faults: None,
            record_deploys_late: false,
            next_id: 0,
            servers_added: k,
            rke_rotations: 0,
        };
        for resource in RESOURCES {
            for _ in 0..2 {
                cluster.write_new(0, resource);
            }
        }
        cluster
    }

    /// Servers running with automatic reload (what the executor observes from the containers).
    pub fn reloading(&self) -> Vec<String> {
        self.servers
            .iter()
            .filter(|s| s.reload)
            .map(|s| s.name.clone())
            .collect()
    }

    pub fn names(&self) -> Vec<String> {
        self.servers.iter().map(|s| s.name.clone()).collect()
    }

    fn write_unit(&self, server: usize, resource: &str) -> UnitId {
        units_for(&self.servers[server].config, resource).remove(0)
    }

    fn write_new(&mut self, server: usize, resource: &str) {
        let unit = self.write_unit(server, resource);
        self.next_id += 1;
        self.objects.push(Object {
            id: self.next_id,
            resource: resource.to_string(),
            unit,
        });
    }

    /// Whether the executor's next node change meets fault `percent` (never without [`Cluster::faults`]).
    fn fault(&mut self, percent: u64) -> bool {
        self.faults.as_mut().is_some_and(|rng| rng.chance(percent))
    }

    /// Drift between runs: `server` gets an extra read-only key (unknown to atrest) after the providers of
    /// every resource of its config. It still reads and writes everything as before; the plan must put the
    /// expected config back.
    pub fn drift(&mut self, server: usize) {
        let Some(config) = &self.servers[server].config else {
            return;
        };
        let mut rules = Rules::from_config(config);
        for units in rules.0.values_mut() {
            units.push(super::units::key_unit(
                super::units::KeyProvider::Aescbc,
                "drift",
                "ZHJpZnQ=",
            ));
        }
        self.servers[server].config = Some(rules.to_config());
    }

    /// `rke up` with one more controlplane in cluster.yml, between runs: RKE starts its kube-apiserver with the
    /// config its state names as deployed (what the executor last recorded as deployed), with the reload flag
    /// when cluster.yml asks for it.
    pub fn add_controlplane(&mut self) {
        self.servers_added += 1;
        let config = self.current.config().cloned();
        self.servers.push(Server {
            name: format!("cp{}", self.servers_added),
            reload: self.reload_wanted && config.is_some(),
            config,
            pending: None,
        });
    }

    /// `rke up` with a controlplane gone from cluster.yml, between runs: its kube-apiserver is removed; what it
    /// stored stays in etcd. The last controlplane is never removed.
    pub fn remove_controlplane(&mut self, server: usize) {
        if self.servers.len() > 1 {
            self.servers.remove(server % self.servers.len());
        }
    }

    /// `rke encrypt rotate-key` between runs, when the deployed config is RKE's managed one and atrest has no
    /// transition recorded (RKE refuses anything else, or the operator ran one tool at a time): RKE ends with
    /// a fresh key alone on every server, every secret rewritten with it, and its state naming that config.
    /// Returns whether it ran.
    pub fn rke_rotate_key(&mut self) -> bool {
        if self.record.is_some() || !matches!(self.current, Target::Managed(_)) {
            return false;
        }
        self.rke_rotations += 1;
        let name = format!("rke{}", self.rke_rotations);
        let secret = format!("{name:0<16}");
        let key = super::units::key_unit(super::units::KeyProvider::Aescbc, &name, &secret);
        let mut rules = BTreeMap::new();
        rules.insert(
            RuleKey::parse("secrets"),
            vec![key, super::units::Unit::Identity],
        );
        let config = Rules(rules).to_config();
        for server in &mut self.servers {
            server.config = Some(config.clone());
            server.pending = None;
        }
        let write = units_for(&Some(config.clone()), "secrets").remove(0);
        for object in self.objects.iter_mut().filter(|o| o.resource == "secrets") {
            object.unit = write.clone();
        }
        self.current = Target::deployed(Some(config));
        true
    }

    /// An update through `server`: it must read the object, then stores it with its write unit.
    fn update(&mut self, server: usize, object: usize) -> Result<(), String> {
        let resource = self.objects[object].resource.clone();
        if !units_for(&self.servers[server].config, &resource).contains(&self.objects[object].unit)
        {
            return Err(format!(
                "{} cannot read a {resource} object stored with {}",
                self.servers[server].name, self.objects[object].unit
            ));
        }
        self.objects[object].unit = self.write_unit(server, &resource);
        Ok(())
    }

    /// The invariant: every server can read every stored object.
    pub fn check(&self) -> Result<(), String> {
        for server in &self.servers {
            for object in &self.objects {
                if !units_for(&server.config, &object.resource).contains(&object.unit) {
                    return Err(format!(
                        "{} (config {}) cannot read a {} object stored with {}",
                        server.name,
                        describe(&server.config, &object.resource),
                        object.resource,
                        object.unit
                    ));
                }
            }
        }
        Ok(())
    }

    pub fn census(&self) -> BTreeMap<String, BTreeMap<String, u64>> {
        let mut census: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
        for object in &self.objects {
            *census
                .entry(object.resource.clone())
                .or_default()
                .entry(object.unit.label())
                .or_default() += 1;
        }
        census
    }

    fn moment(&mut self, chaos: &mut Chaos) -> Result<(), String> {
        match chaos {
            Chaos::EveryServerWrites => {
                for server in 0..self.servers.len() {
                    for resource in RESOURCES {
                        self.write_new(server, resource);
                    }
                }
            }
            Chaos::Random(rng) => {
                // A reloading server picks up a written file whenever its poll comes round.
                for server in &mut self.servers {
                    if server.pending.is_some() && rng.chance(30) {
                        server.config = server.pending.take().unwrap_or_default();
                    }
                }
                for _ in 0..rng.below(4) {
                    let server = rng.below(self.servers.len());
                    if rng.chance(10) && !self.objects.is_empty() {
                        let object = rng.below(self.objects.len());
                        self.objects.remove(object);
                    } else if rng.chance(50) || self.objects.is_empty() {
                        let resource = RESOURCES[rng.below(RESOURCES.len())];
                        self.write_new(server, resource);
                    } else {
                        let object = rng.below(self.objects.len());
                        self.update(server, object)?;
                    }
                }
            }
        }
        self.check()
    }

    fn pick_server(&self, chaos: &mut Chaos, salt: usize) -> usize {
        match chaos {
            Chaos::Random(rng) => rng.below(self.servers.len()),
            Chaos::EveryServerWrites => salt % self.servers.len(),
        }
    }

    /// Runs `plan` like the executor, stopping after `stop_after` moments (a moment = one node restarted, or
    /// one other step, or one object rewritten) if given.
    pub fn run(&mut self, plan: &Plan, stop_after: Option<usize>, chaos: &mut Chaos) -> Outcome {
        let mut clock = Clock {
            moments: 0,
            stop_after,
        };
        match self.run_steps(plan, &mut clock, chaos) {
            Ok(()) => Outcome::Completed,
            Err(stopped) => stopped,
        }
    }

    /// One moment passes: every server may write (per `chaos`); the run stops here when its moments are up.
    fn tick(&mut self, clock: &mut Clock, chaos: &mut Chaos) -> Result<(), Outcome> {
        self.moment(chaos).map_err(Outcome::Violation)?;
        clock.moments += 1;
        if clock.stop_after.is_some_and(|s| clock.moments >= s) {
            return Err(Outcome::Interrupted);
        }
        Ok(())
    }

    /// The plan's steps in order; `Err` is how the run ended early.
    fn run_steps(
        &mut self,
        plan: &Plan,
        clock: &mut Clock,
        chaos: &mut Chaos,
    ) -> Result<(), Outcome> {
        // The executor drops a recorded transition the plan abandons before its first step (it changed nothing).
        if let Some(kind) = &plan.abandons {
            match &self.record {
                Some(record) if &record.kind == kind => self.record = None,
                other => {
                    return Err(Outcome::Violation(format!(
                        "the plan abandons a {kind} transition, but the record is {other:?}"
                    )));
                }
            }
        }
        let mut active: Option<usize> = None;
        for (i, step) in plan.steps.iter().enumerate() {
            if active != Some(step.transition) {
                active = Some(step.transition);
                self.start_transition(&plan.transitions[step.transition]);
            }
            match &step.action {
                Action::Snapshot | Action::Archive { .. } => {}
                Action::Deploy {
                    config,
                    nodes,
                    reload,
                    flag,
                } => self.deploy(step, config, nodes, reload, *flag, clock, chaos)?,
                Action::Rewrite {
                    resources,
                    targeted,
                } => self.rewrite(resources, *targeted, clock, chaos)?,
                Action::Verify { rules } => self.verify(rules)?,
                Action::PersistStage { complete: true } => {
                    let spec = &plan.transitions[step.transition];
                    self.current = Target::deployed(spec.to.clone());
                    if step.stage == Stage::Start {
                        self.record = None;
                    } else if let Some(record) = &mut self.record {
                        record.done = ALL_PHASES.to_vec();
                    }
                }
                Action::PersistStage { complete: false } => {}
            }
            self.record_step(step, plan.steps.get(i + 1));
            self.tick(clock, chaos)?;
        }
        Ok(())
    }

    /// A new transition is recorded when it starts (a resumed one keeps its record).
    fn start_transition(&mut self, spec: &TransitionSpec) {
        if spec.resumed_at.is_none() || self.record.is_none() {
            self.record = Some(InProgress {
                kind: spec.kind.as_str().to_string(),
                from: spec.from.clone(),
                to: spec.to.clone(),
                stage: Stage::Start,
                done: vec![],
                deploying: None,
            });
        }
    }

    /// After a step, as the executor saves it: its stage, and its phase done when the next step is another's.
    fn record_step(&mut self, step: &Step, next: Option<&Step>) {
        if let Some(record) = &mut self.record {
            record.stage = step.stage;
            record.deploying = None;
            if next.is_none_or(|n| n.transition != step.transition || n.phase != step.phase)
                && !record.done.contains(&step.phase)
            {
                record.done.push(step.phase);
            }
        }
    }

    /// A deploy: the reloading nodes get the file and load it in any order, then the others are restarted one
    /// at a time (each may fail its health gate, or the run may crash before recording it).
    #[allow(clippy::too_many_arguments)]
    fn deploy(
        &mut self,
        step: &Step,
        config: &Option<EncryptionConfiguration>,
        nodes: &[String],
        reload: &[String],
        flag: Flag,
        clock: &mut Clock,
        chaos: &mut Chaos,
    ) -> Result<(), Outcome> {
        for node in nodes {
            if !self.servers.iter().any(|s| &s.name == node) {
                return Err(Outcome::Violation(format!("deploy to unknown node {node}")));
            }
        }
        // As the executor does before the first node changes (`record_ahead`), and puts back when the first node
        // is rolled back.
        let recorded_before = self.current.clone();
        if !self.record_deploys_late && super::reads_all(config, &self.current.config().cloned()) {
            self.current = Target::deployed(config.clone());
        }
        self.reload_nodes(step, config, reload, flag, clock, chaos)?;
        for (restarted, node) in nodes.iter().filter(|n| !reload.contains(n)).enumerate() {
            // Its health gate fails after the change: the executor restores its file and container (the node is
            // down meanwhile, then on its old config) and stops.
            if self.fault(3) {
                if restarted == 0 && reload.is_empty() {
                    self.current = recorded_before;
                }
                self.tick(clock, chaos)?;
                return Err(Outcome::Interrupted);
            }
            let wanted = self.reload_wanted;
            let crash_before_record = self.fault(3);
            let Some(server) = self.servers.iter_mut().find(|s| &s.name == node) else {
                return Err(Outcome::Violation(format!("deploy to unknown node {node}")));
            };
            server.config = config.clone();
            server.pending = None;
            // The executor adds the reload flag when cluster.yml asks for it, and drops it with the config flag.
            match flag {
                Flag::Remove => server.reload = false,
                Flag::Add | Flag::Keep => server.reload |= wanted,
            }
            if crash_before_record {
                self.moment(chaos).map_err(Outcome::Violation)?;
                return Err(Outcome::Interrupted);
            }
            self.record_progress(step, config, node);
            self.tick(clock, chaos)?;
        }
        // As the executor does once a deploy's nodes are done: RKE's state names its config as deployed, which is
        // what the next run reads as current.
        self.current = Target::deployed(config.clone());
        Ok(())
    }

    /// Reloading nodes: the file goes to all of them, then the wait until each has loaded it.
    fn reload_nodes(
        &mut self,
        step: &Step,
        config: &Option<EncryptionConfiguration>,
        reload: &[String],
        flag: Flag,
        clock: &mut Clock,
        chaos: &mut Chaos,
    ) -> Result<(), Outcome> {
        for (i, node) in reload.iter().enumerate() {
            let Some(server) = self.servers.iter_mut().find(|s| &s.name == node) else {
                return Err(Outcome::Violation(format!("reload on unknown node {node}")));
            };
            if !server.reload || flag != Flag::Keep {
                return Err(Outcome::Violation(format!(
                    "{node} is planned to reload but runs without automatic reload (or the flag changes)"
                )));
            }
            if self.reload_without_wait && i == 0 {
                server.config = config.clone();
                server.pending = None;
            } else {
                server.pending = Some(config.clone());
            }
            self.tick(clock, chaos)?;
        }
        if self.reload_without_wait {
            return Ok(());
        }
        let mut order: Vec<usize> = (0..reload.len()).collect();
        for i in (1..order.len()).rev() {
            let j = self.pick_server(chaos, i) % (i + 1);
            order.swap(i, j);
        }
        for i in order {
            let node = &reload[i];
            if let Some(server) = self.servers.iter_mut().find(|s| &s.name == node)
                && let Some(loaded) = server.pending.take()
            {
                server.config = loaded;
                self.tick(clock, chaos)?;
            }
            self.record_progress(step, config, node);
        }
        Ok(())
    }

    /// A rewrite walks what is fixed when it starts, as the executor's does: a list (every object of a covered
    /// resource) or, targeted, a census of the keys off the write unit. Objects written or moved after that are
    /// not looked at again; verify then counts.
    fn rewrite(
        &mut self,
        resources: &[RewriteTarget],
        targeted: bool,
        clock: &mut Clock,
        chaos: &mut Chaos,
    ) -> Result<(), Outcome> {
        let covered = |object: &Object| {
            resources
                .iter()
                .find(|t| RuleKey::parse(&t.resource).covers(&RuleKey::parse(&object.resource)))
        };
        let walk: Vec<u64> = self
            .objects
            .iter()
            .filter(|o| covered(o).is_some_and(|t| !targeted || o.unit != t.write))
            .map(|o| o.id)
            .collect();
        for id in walk {
            // Deleted since the list: gone, nothing to rewrite.
            let Some(object) = self.objects.iter().position(|o| o.id == id) else {
                continue;
            };
            let server = self.pick_server(chaos, object);
            self.update(server, object).map_err(Outcome::Violation)?;
            self.tick(clock, chaos)?;
        }
        Ok(())
    }

    /// Verify: every object on a unit its resource's rule allows.
    fn verify(&self, rules: &[VerifyRule]) -> Result<(), Outcome> {
        for object in &self.objects {
            let key = RuleKey::parse(&object.resource);
            let rule = key.lookup_chain().into_iter().find_map(|candidate| {
                rules
                    .iter()
                    .find(|r| RuleKey::parse(&r.resource) == candidate)
            });
            let allowed = rule.map_or(vec![UnitId::Identity], |r| r.allowed.clone());
            if !allowed.contains(&object.unit) {
                return Err(Outcome::VerifyFailed(format!(
                    "a {} object is stored with {}",
                    object.resource, object.unit
                )));
            }
        }
        Ok(())
    }

    /// As the executor does after each node: a resumed run skips the nodes done.
    fn record_progress(
        &mut self,
        step: &Step,
        config: &Option<EncryptionConfiguration>,
        node: &str,
    ) {
        if let Some(record) = &mut self.record {
            let sha = json_config_hash(config.as_ref());
            let progress = record.deploying.get_or_insert_with(|| DeployProgress {
                phase: step.phase,
                config_sha256: sha.clone(),
                nodes: Vec::new(),
            });
            if progress.phase != step.phase || progress.config_sha256 != sha {
                *progress = DeployProgress {
                    phase: step.phase,
                    config_sha256: sha,
                    nodes: Vec::new(),
                };
            }
            progress.nodes.push(node.to_string());
        }
    }

    /// The end state of a completed plan: every server has exactly `to`, every object is on `to`'s writer.
    pub fn check_final(&self, to: &Option<EncryptionConfiguration>) -> Result<(), String> {
        for server in &self.servers {
            if &server.config != to {
                return Err(format!(
                    "{} does not have exactly the desired config",
                    server.name
                ));
            }
        }
        for object in &self.objects {
            let write = units_for(to, &object.resource).remove(0);
            if object.unit != write {
                return Err(format!(
                    "a {} object is on {} instead of {write}",
                    object.resource, object.unit
                ));
            }
        }
        Ok(())
    }
}

fn describe(config: &Option<EncryptionConfiguration>, resource: &str) -> String {
    let ids: Vec<String> = units_for(config, resource)
        .iter()
        .map(UnitId::label)
        .collect();
    format!("[{}]", ids.join(", "))
}
