//! [`SimCompute`]: a **SIMULATION** of a compute backend, for planning, demos and tests.
//!
//! **Nothing runs.** No process is started and no image is pulled;
//! [`capabilities().simulated`](cloud_abstraction::compute::ComputeCapabilities::simulated)
//! is true so that callers can tell. What the simulator does instead:
//!
//! - A command spec `sh -c '<script>'` (or `bash -c`, `/bin/sh -c`) is *interpreted* with the
//!   conformance kit's tiny vocabulary (see
//!   `cloud_abstraction::testkit::compute`, feature `testkit`): `echo WORDS` (with `'…'`/`"…"` quoting,
//!   `$VAR`/`${VAR}` from the spec's env and `PORT`/`PORT_<NAME>`, and `>&2` for stderr)
//!   writes a log line; `sleep N` and `exec sleep N` keep the instance running for N seconds
//!   of (tokio) time; `exit N` ends the run with code N; `true`/`false`/`:` set the status;
//!   any other statement is ignored. Statements are separated by `;`, `&&`, `||` or line
//!   breaks (without the shell's conditional meaning). A script that reaches its end exits
//!   with the status of its last statement.
//! - Any other command, and any image spec, is a service that runs until it is stopped.
//! - Restart policies, back-off, scaling, generations, logs and phases follow the same engine
//!   as [`ProcessCompute`](super::ProcessCompute).
//! - Images, commands, cpu/memory limits and ports are all accepted and recorded (limits are
//!   not enforced: nothing consumes anything). Endpoints are made-up addresses
//!   `<workload>-<index>.sim:<port>`. Instance ids are `sim-<n>`, new for every run.

use super::engine::{Attempt, Engine, RunContext, Runner};
use super::spec::port_env;
use async_trait::async_trait;
use cloud_abstraction::compute::{
    Compute, ComputeCapabilities, LogOptions, LogPage, LogStream, WorkloadSpec, WorkloadStatus,
};
use cloud_abstraction::{BackendInfo, Location, Result};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::oneshot;

const BACKEND: &str = "sim";
/// The longest simulated sleep (`sleep infinity` and huge numbers become this).
const MAX_SLEEP: Duration = Duration::from_secs(365 * 24 * 3600);

/// A simulated [`Compute`] backend (`"sim"`): see the [module docs](self). **Nothing runs.**
#[derive(Clone)]
pub struct SimCompute {
    engine: Arc<Engine<SimRunner>>,
    location: Location,
}

impl SimCompute {
    /// A simulator at [`Location::local`] with no workloads.
    pub fn new() -> Self {
        let mut caps = ComputeCapabilities::minimal();
        caps.images = true;
        caps.commands = true;
        caps.logs = true;
        caps.scale = true;
        caps.resource_limits = true;
        caps.ports = true;
        caps.simulated = true;
        Self {
            engine: Arc::new(Engine::new(BACKEND, caps, SimRunner::default())),
            location: Location::local(),
        }
    }

    /// The same simulator, reporting `location` (e.g. to plan for a given region).
    pub fn with_location(mut self, location: Location) -> Self {
        self.location = location;
        self
    }
}

impl Default for SimCompute {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for SimCompute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimCompute")
            .field("location", &self.location)
            .finish_non_exhaustive()
    }
}

// The operation spans (backend, workload; failures as debug events) are on the shared
// engine's methods, which these delegate to.
#[async_trait]
impl Compute for SimCompute {
    fn info(&self) -> BackendInfo {
        BackendInfo {
            backend: BACKEND.to_string(),
            location: self.location.clone(),
        }
    }

    fn capabilities(&self) -> ComputeCapabilities {
        self.engine.capabilities()
    }

    async fn apply(&self, spec: WorkloadSpec) -> Result<WorkloadStatus> {
        self.engine.apply(spec).await
    }

    async fn get(&self, name: &str) -> Result<Option<WorkloadStatus>> {
        self.engine.get(name).await
    }

    async fn list(&self, selector: &BTreeMap<String, String>) -> Result<Vec<WorkloadStatus>> {
        self.engine.list(selector).await
    }

    async fn scale(&self, name: &str, replicas: u32) -> Result<WorkloadStatus> {
        self.engine.scale(name, replicas).await
    }

    async fn delete(&self, name: &str) -> Result<bool> {
        self.engine.delete(name).await
    }

    async fn logs(&self, name: &str, options: LogOptions) -> Result<LogPage> {
        self.engine.logs(name, options).await
    }
}

/// One interpreted statement.
#[derive(Debug, Clone, PartialEq)]
enum Stmt {
    Echo { line: String, stderr: bool },
    Sleep(Duration),
    Exit(i32),
    Status(i32),
}

/// What a spec does in the simulator.
#[derive(Debug, Clone, PartialEq)]
enum Program {
    Script(Vec<Stmt>),
    Forever,
}

fn program_of(spec: &WorkloadSpec) -> Program {
    let shell = spec
        .command
        .as_deref()
        .map(|c| c.rsplit('/').next().unwrap_or(c));
    match (shell, spec.args.as_slice()) {
        (Some("sh" | "bash" | "dash" | "ash"), [flag, script, ..]) if flag == "-c" => {
            let mut env: BTreeMap<String, String> = port_env(spec).into_iter().collect();
            env.extend(spec.env.iter().map(|(k, v)| (k.clone(), v.clone())));
            Program::Script(parse_script(script, &env))
        }
        _ => Program::Forever,
    }
}

/// Splits a script into statements of words, with quoting and `$VAR` expansion.
fn split_statements(script: &str, env: &BTreeMap<String, String>) -> Vec<Vec<String>> {
    let mut statements = Vec::new();
    let mut words: Vec<String> = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = script.chars().peekable();
    let end_word = |words: &mut Vec<String>, word: &mut String, in_word: &mut bool| {
        if *in_word {
            words.push(std::mem::take(word));
            *in_word = false;
        }
    };
    while let Some(c) = chars.next() {
        match c {
            ';' | '\n' | '&' | '|' => {
                // `&&` and `||` separate like `;` (the simulator ignores their conditions).
                if (c == '&' || c == '|') && chars.peek() == Some(&c) {
                    chars.next();
                } else if c == '&' && in_word && word.ends_with('>') {
                    // Part of a redirection such as `>&2`.
                    word.push(c);
                    continue;
                }
                end_word(&mut words, &mut word, &mut in_word);
                if !words.is_empty() {
                    statements.push(std::mem::take(&mut words));
                }
            }
            c if c.is_whitespace() => end_word(&mut words, &mut word, &mut in_word),
            '\'' => {
                in_word = true;
                for q in chars.by_ref() {
                    if q == '\'' {
                        break;
                    }
                    word.push(q);
                }
            }
            '"' => {
                in_word = true;
                while let Some(q) = chars.next() {
                    match q {
                        '"' => break,
                        '\\' if matches!(chars.peek(), Some('"' | '\\' | '$')) => {
                            if let Some(n) = chars.next() {
                                word.push(n);
                            }
                        }
                        '$' => expand(&mut chars, env, &mut word),
                        q => word.push(q),
                    }
                }
            }
            '\\' => {
                in_word = true;
                if let Some(n) = chars.next() {
                    word.push(n);
                }
            }
            '$' => {
                in_word = true;
                expand(&mut chars, env, &mut word);
            }
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    end_word(&mut words, &mut word, &mut in_word);
    if !words.is_empty() {
        statements.push(words);
    }
    statements
}

/// Expands `$NAME` or `${NAME}` (the `$` already read) into `out`; unset is empty.
fn expand(
    chars: &mut std::iter::Peekable<std::str::Chars<'_>>,
    env: &BTreeMap<String, String>,
    out: &mut String,
) {
    let mut name = String::new();
    if chars.peek() == Some(&'{') {
        chars.next();
        for c in chars.by_ref() {
            if c == '}' {
                break;
            }
            name.push(c);
        }
    } else {
        while let Some(&c) = chars.peek() {
            if c.is_ascii_alphanumeric() || c == '_' {
                name.push(c);
                chars.next();
            } else {
                break;
            }
        }
        if name.is_empty() {
            out.push('$');
            return;
        }
    }
    if let Some(v) = env.get(&name) {
        out.push_str(v);
    }
}

fn parse_sleep(arg: Option<&String>) -> Duration {
    match arg.map(String::as_str) {
        Some("infinity") => MAX_SLEEP,
        Some(a) => a
            .parse::<f64>()
            .ok()
            .and_then(|s| Duration::try_from_secs_f64(s).ok())
            .map_or(Duration::ZERO, |d| d.min(MAX_SLEEP)),
        None => Duration::ZERO,
    }
}

fn parse_script(script: &str, env: &BTreeMap<String, String>) -> Vec<Stmt> {
    let mut out = Vec::new();
    for words in split_statements(script, env) {
        let mut words = words.as_slice();
        if words.first().map(String::as_str) == Some("exec") {
            words = &words[1..];
        }
        let Some((first, rest)) = words.split_first() else {
            continue;
        };
        match first.as_str() {
            "echo" => {
                let stderr = rest.iter().any(|w| w == ">&2" || w == "1>&2");
                let line = rest
                    .iter()
                    .filter(|w| !matches!(w.as_str(), ">&2" | "1>&2" | "2>&1"))
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(" ");
                out.push(Stmt::Echo { line, stderr });
            }
            "sleep" => out.push(Stmt::Sleep(parse_sleep(rest.first()))),
            "exit" => {
                let code = rest
                    .first()
                    .and_then(|c| c.parse::<i32>().ok())
                    .unwrap_or(0);
                out.push(Stmt::Exit(code & 0xff));
            }
            "true" | ":" => out.push(Stmt::Status(0)),
            "false" => out.push(Stmt::Status(1)),
            // Anything else: ignored, documented.
            _ => out.push(Stmt::Status(0)),
        }
    }
    out
}

/// Interprets programs; counts runs for instance ids.
#[derive(Debug, Default)]
struct SimRunner {
    runs: AtomicU64,
}

#[async_trait]
impl Runner for SimRunner {
    async fn run(&self, ctx: &RunContext, stop: &mut oneshot::Receiver<()>) -> Attempt {
        let n = self.runs.fetch_add(1, Ordering::Relaxed) + 1;
        ctx.started(format!("sim-{n}"));
        let statements = match program_of(&ctx.spec) {
            Program::Forever => {
                let _ = (&mut *stop).await;
                return Attempt::Stopped;
            }
            Program::Script(statements) => statements,
        };
        let mut status = 0;
        for stmt in statements {
            match stmt {
                Stmt::Echo { line, stderr } => {
                    let stream = if stderr {
                        LogStream::Stderr
                    } else {
                        LogStream::Stdout
                    };
                    ctx.logs.push(ctx.index, stream, line);
                    status = 0;
                }
                Stmt::Sleep(d) => {
                    tokio::select! {
                        () = tokio::time::sleep(d) => {}
                        _ = &mut *stop => return Attempt::Stopped,
                    }
                    status = 0;
                }
                Stmt::Exit(code) => return Attempt::Exited(code),
                Stmt::Status(code) => status = code,
            }
        }
        Attempt::Exited(status)
    }

    fn endpoint(&self, spec: &WorkloadSpec, index: u32, port: u16) -> String {
        format!("{}-{index}.sim:{port}", spec.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn parses_the_vocabulary() {
        let e = env(&[("A", "x y"), ("B", "b")]);
        let got = parse_script(
            "echo started; echo \"v=$A\" '$B' ${B}!; echo oops >&2; sleep 1.5 && exit 3",
            &e,
        );
        assert_eq!(
            got,
            vec![
                Stmt::Echo {
                    line: "started".into(),
                    stderr: false
                },
                Stmt::Echo {
                    line: "v=x y $B b!".into(),
                    stderr: false
                },
                Stmt::Echo {
                    line: "oops".into(),
                    stderr: true
                },
                Stmt::Sleep(Duration::from_millis(1500)),
                Stmt::Exit(3),
            ]
        );
        assert_eq!(
            parse_script("exec sleep infinity", &e),
            vec![Stmt::Sleep(MAX_SLEEP)]
        );
        assert_eq!(
            parse_script("echo 'three  spaced'; false", &e),
            vec![
                Stmt::Echo {
                    line: "three  spaced".into(),
                    stderr: false
                },
                Stmt::Status(1)
            ]
        );
    }

    #[test]
    fn non_scripts_run_forever() {
        let spec = WorkloadSpec::image("w", "nginx");
        assert_eq!(program_of(&spec), Program::Forever);
        let spec = WorkloadSpec::command("w", "my-server").with_args(["--port", "80"]);
        assert_eq!(program_of(&spec), Program::Forever);
        let spec = WorkloadSpec::command("w", "/bin/sh").with_args(["-c", "exit 2"]);
        assert_eq!(program_of(&spec), Program::Script(vec![Stmt::Exit(2)]));
    }
}
