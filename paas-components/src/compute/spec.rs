//! The rules every compute backend of this crate applies to specs and statuses: validation,
//! what counts as the same program, the port env, and a workload's phase from its instances
//! (see the [module docs](super)).

use cloud_abstraction::compute::{
    ComputeCapabilities, Instance, MAX_REPLICAS, Phase, WorkloadSpec,
};
use cloud_abstraction::{Error, Result, validate};
use std::collections::BTreeSet;

/// The env a program gets for its ports: `PORT` (the first) and `PORT_<NAME>`.
pub(crate) fn port_env(spec: &WorkloadSpec) -> Vec<(String, String)> {
    let mut env = Vec::new();
    if let Some(first) = spec.ports.first() {
        env.push(("PORT".to_string(), first.port.to_string()));
    }
    for p in &spec.ports {
        let name = p.name.to_ascii_uppercase().replace('-', "_");
        env.push((format!("PORT_{name}"), p.port.to_string()));
    }
    env
}

/// Whether two specs run the same program (they differ at most in replicas and labels).
pub(crate) fn same_program(a: &WorkloadSpec, b: &WorkloadSpec) -> bool {
    a.image == b.image
        && a.command == b.command
        && a.args == b.args
        && a.env == b.env
        && a.cpu_millis == b.cpu_millis
        && a.memory_mib == b.memory_mib
        && a.ports == b.ports
        && a.restart == b.restart
}

fn check_text(backend: &'static str, what: &str, value: &str) -> Result<()> {
    if value.contains('\0') {
        return Err(Error::invalid(backend, format!("{what} contains NUL")));
    }
    Ok(())
}

pub(crate) fn check_replicas(backend: &'static str, replicas: u32) -> Result<()> {
    if replicas > MAX_REPLICAS {
        return Err(Error::invalid(
            backend,
            format!("{replicas} replicas asked for; the limit is {MAX_REPLICAS}"),
        ));
    }
    Ok(())
}

/// Checks a spec: malformed input is `InvalidArgument`, fields the backend cannot honour
/// are `Unsupported`.
pub(crate) fn validate_spec(
    backend: &'static str,
    caps: &ComputeCapabilities,
    spec: &WorkloadSpec,
) -> Result<()> {
    validate::resource_name(backend, "workload", &spec.name)?;
    check_replicas(backend, spec.replicas)?;
    match (&spec.command, &spec.image) {
        (None, None) => {
            return Err(Error::invalid(
                backend,
                format!(
                    "workload `{}` has neither a command nor an image",
                    spec.name
                ),
            ));
        }
        (Some(c), _) if c.is_empty() => {
            return Err(Error::invalid(backend, "the command is empty"));
        }
        (_, Some(i)) if i.is_empty() => {
            return Err(Error::invalid(backend, "the image is empty"));
        }
        _ => {}
    }
    if let Some(c) = &spec.command {
        check_text(backend, "the command", c)?;
    }
    if let Some(i) = &spec.image {
        check_text(backend, "the image", i)?;
    }
    for a in &spec.args {
        check_text(backend, "an argument", a)?;
    }
    for (k, v) in &spec.env {
        if k.is_empty() || k.contains('=') {
            return Err(Error::invalid(
                backend,
                format!("env name `{}` is empty or contains `=`", k.escape_debug()),
            ));
        }
        check_text(backend, "an env name", k)?;
        // The value may be a secret: name the variable, never the value.
        check_text(backend, &format!("env `{k}`"), v)?;
    }
    for (k, v) in &spec.labels {
        if k.is_empty() || k.len() > 253 || v.len() > 253 {
            return Err(Error::invalid(
                backend,
                "label names must be 1 to 253 bytes and values at most 253",
            ));
        }
        if k.chars().chain(v.chars()).any(char::is_control) {
            return Err(Error::invalid(
                backend,
                "labels must not contain control characters",
            ));
        }
    }
    if spec.cpu_millis == Some(0) || spec.memory_mib == Some(0) {
        return Err(Error::invalid(
            backend,
            "cpu and memory limits must be above 0",
        ));
    }
    let mut names = BTreeSet::new();
    let mut numbers = BTreeSet::new();
    for p in &spec.ports {
        validate::resource_name(backend, "port", &p.name)?;
        if p.port == 0 {
            return Err(Error::invalid(backend, format!("port `{}` is 0", p.name)));
        }
        if !names.insert(p.name.as_str()) || !numbers.insert(p.port) {
            return Err(Error::invalid(
                backend,
                format!("port `{}` ({}) is declared twice", p.name, p.port),
            ));
        }
    }
    // Then what this backend can honour.
    if spec.image.is_some() && !caps.images {
        return Err(Error::unsupported(backend, "running images"));
    }
    if spec.image.is_none() && !caps.commands {
        return Err(Error::unsupported(backend, "running host commands"));
    }
    if (spec.cpu_millis.is_some() || spec.memory_mib.is_some()) && !caps.resource_limits {
        return Err(Error::unsupported(backend, "cpu and memory limits"));
    }
    if !spec.ports.is_empty() && !caps.ports {
        return Err(Error::unsupported(backend, "ports"));
    }
    Ok(())
}

/// The workload's phase from its instances (see the module docs).
pub(crate) fn workload_phase(desired: u32, instances: &[Instance]) -> Phase {
    if desired == 0 && instances.is_empty() {
        return Phase::Stopped;
    }
    if instances.iter().any(|i| i.phase == Phase::Failed) {
        return Phase::Failed;
    }
    if instances.len() as u32 == desired && instances.iter().all(|i| i.phase == Phase::Succeeded) {
        return Phase::Succeeded;
    }
    if instances.len() as u32 == desired
        && instances
            .iter()
            .all(|i| matches!(i.phase, Phase::Running | Phase::Succeeded))
    {
        return Phase::Running;
    }
    Phase::Pending
}
