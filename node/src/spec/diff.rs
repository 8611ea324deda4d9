//! Human description of the change between two cluster specs, for `droverctl config diff` and
//! the history record of a `config apply`. Sites and services are matched by name; runbooks
//! are summarized per site and phase; everything else is compared key by key on the JSON form
//! (so durations read as `3s -> 5s`).

use std::collections::BTreeSet;

use serde_json::Value;

use super::{ClusterSpec, Phase, Service};

/// Lines describing how `new` differs from `old` (`None`: nothing applied yet):
/// `+ service file-transfer`, `- site qa`, `~ policy.down_after: 3s -> 5s`,
/// `~ service file-transfer: runbook dr.activate changed (2 -> 3 steps)`. Empty when equal.
pub fn diff(old: Option<&ClusterSpec>, new: &ClusterSpec) -> Vec<String> {
    let mut out = Vec::new();
    let Some(old) = old else {
        for s in &new.sites {
            out.push(format!("+ site {}{}", s.name, if s.witness { " (witness)" } else { "" }));
        }
        walk(&mut out, "policy", &Value::Null, &to_value(&new.policy));
        for s in &new.services {
            out.push(format!("+ service {}", s.name));
        }
        return out;
    };

    for s in &old.sites {
        if new.site(&s.name).is_none() {
            out.push(format!("- site {}", s.name));
        }
    }
    for s in &new.sites {
        match old.site(&s.name) {
            None => {
                out.push(format!("+ site {}{}", s.name, if s.witness { " (witness)" } else { "" }))
            }
            Some(o) if o.witness != s.witness => {
                out.push(format!("~ site {}: witness {} -> {}", s.name, o.witness, s.witness))
            }
            Some(_) => {}
        }
    }
    let old_order: Vec<&str> = old.sites.iter().map(|s| s.name.as_str()).collect();
    let new_order: Vec<&str> = new.sites.iter().map(|s| s.name.as_str()).collect();
    if old_order != new_order && old.sites.len() == new.sites.len() {
        out.push(format!("~ site order: {} -> {}", old_order.join(", "), new_order.join(", ")));
    }

    walk(&mut out, "policy", &to_value(&old.policy), &to_value(&new.policy));

    for s in &old.services {
        if new.service(&s.name).is_none() {
            out.push(format!("- service {}", s.name));
        }
    }
    for s in &new.services {
        match old.service(&s.name) {
            None => out.push(format!("+ service {}", s.name)),
            Some(o) => service_diff(&mut out, o, s),
        }
    }
    out
}

fn service_diff(out: &mut Vec<String>, old: &Service, new: &Service) {
    let prefix = format!("service {}: ", new.name);
    let mut o = to_value(old);
    let mut n = to_value(new);
    for v in [&mut o, &mut n] {
        if let Value::Object(m) = v {
            m.remove("runbooks");
        }
    }
    let mut fields = Vec::new();
    walk(&mut fields, "", &o, &n);
    out.extend(fields.into_iter().map(|line| {
        // "~ checks[0].timeout: .." -> "~ service x: checks[0].timeout: .."
        let (sign, rest) = line.split_at(2);
        format!("{sign}{prefix}{rest}")
    }));

    let keys: BTreeSet<(&str, Phase)> = old
        .runbooks
        .iter()
        .chain(new.runbooks.iter())
        .flat_map(|(site, phases)| phases.keys().map(move |p| (site.as_str(), *p)))
        .collect();
    for (site, phase) in keys {
        let (a, b) = (old.runbook(site, phase), new.runbook(site, phase));
        let name = format!("runbook {site}.{phase}");
        if a.is_empty() {
            out.push(format!("~ {prefix}{name} added ({})", steps(b.len())));
        } else if b.is_empty() {
            out.push(format!("~ {prefix}{name} removed (had {})", steps(a.len())));
        } else if a != b {
            if a.len() == b.len() {
                out.push(format!("~ {prefix}{name} changed ({})", steps(b.len())));
            } else {
                out.push(format!("~ {prefix}{name} changed ({} -> {} steps)", a.len(), b.len()));
            }
        }
    }
}

fn steps(n: usize) -> String {
    format!("{n} step{}", if n == 1 { "" } else { "s" })
}

fn to_value<T: serde::Serialize>(v: &T) -> Value {
    // Spec types serialize to JSON without fail (string keys, finite or null floats).
    serde_json::to_value(v).unwrap_or(Value::Null)
}

/// Appends `+`/`-`/`~` lines for the differences between `a` and `b` at dotted `path`.
fn walk(out: &mut Vec<String>, path: &str, a: &Value, b: &Value) {
    if a == b {
        return;
    }
    let join = |k: &str| if path.is_empty() { k.to_string() } else { format!("{path}.{k}") };
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            // Keep the serialization order of `b` (then removed keys) for readable output.
            let mut ordered: Vec<&String> = y.keys().collect();
            ordered.extend(keys.into_iter().filter(|k| !y.contains_key(*k)));
            for k in ordered {
                let (va, vb) = (x.get(k).unwrap_or(&Value::Null), y.get(k).unwrap_or(&Value::Null));
                walk(out, &join(k), va, vb);
            }
        }
        (Value::Null, Value::Object(y)) => {
            for (k, v) in y {
                walk(out, &join(k), &Value::Null, v);
            }
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            for (i, (va, vb)) in x.iter().zip(y).enumerate() {
                walk(out, &format!("{path}[{i}]"), va, vb);
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            out.push(format!("~ {path}: {} -> {} entries", x.len(), y.len()));
        }
        (Value::Null, v) => out.push(format!("+ {path}: {}", show(v))),
        (v, Value::Null) => out.push(format!("- {path}: {}", show(v))),
        (x, y) => out.push(format!("~ {path}: {} -> {}", show(x), show(y))),
    }
}

fn show(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "none".to_string(),
        other => other.to_string(),
    }
}
