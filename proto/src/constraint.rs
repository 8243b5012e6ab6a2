//! Placement constraints (`node.hostname==a`, `node.labels.zone!=east`): parsed
//! once, matched against nodes by the scheduler, validated by the CLI and manager.
//!
//! Semantics follow Swarm: keys are case-insensitive except for the label name,
//! values compare case-insensitively, and a node without the label has the empty
//! value (so `node.labels.zone!=east` matches it, `node.labels.zone==east` does not).

use std::fmt;

use crate::v1::{Node, NodeRole};
use crate::validate::quoted;

/// The node attribute a constraint looks at.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ConstraintKey {
    /// `node.id`
    NodeId,
    /// `node.hostname` (from the node's description)
    Hostname,
    /// `node.role` (`manager` or `worker`)
    Role,
    /// `node.labels.KEY` (from the node's spec labels); the key is case-sensitive.
    Label(String),
}

/// `==` or `!=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operator {
    Equal,
    NotEqual,
}

/// One parsed placement constraint.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Constraint {
    pub key: ConstraintKey,
    pub operator: Operator,
    pub value: String,
}

const LABEL_PREFIX: &str = "node.labels.";
const KEY_HINT: &str = "use node.id, node.hostname, node.role or node.labels.KEY";

impl Constraint {
    /// Parse `KEY==VALUE` or `KEY!=VALUE`, whitespace around the operator allowed.
    pub fn parse(expr: &str) -> Result<Constraint, String> {
        let fail = |why: String| Err(format!("constraint {}: {}", quoted(expr), why));
        let (pos, operator) = match (expr.find("=="), expr.find("!=")) {
            (Some(a), Some(b)) if b < a => (b, Operator::NotEqual),
            (Some(a), _) => (a, Operator::Equal),
            (None, Some(b)) => (b, Operator::NotEqual),
            (None, None) => {
                return fail("expected KEY==VALUE or KEY!=VALUE (no == or != found)".into());
            }
        };
        let raw_key = expr[..pos].trim();
        let value = expr[pos + 2..].trim();
        if raw_key.is_empty() {
            return fail(format!("missing key before the operator ({KEY_HINT})"));
        }
        if value.is_empty() {
            return fail("missing value after the operator".into());
        }
        if value.contains("==") || value.contains("!=") {
            return fail("more than one operator (use one == or != per constraint)".into());
        }
        if raw_key.chars().any(char::is_whitespace) {
            return fail(format!("key {} contains whitespace", quoted(raw_key)));
        }
        let lower = raw_key.to_ascii_lowercase();
        let key = match lower.as_str() {
            "node.id" => ConstraintKey::NodeId,
            "node.hostname" => ConstraintKey::Hostname,
            "node.role" => {
                let v = value.to_ascii_lowercase();
                if v != "manager" && v != "worker" {
                    return fail(format!(
                        "node.role must be manager or worker, not {}",
                        quoted(value)
                    ));
                }
                ConstraintKey::Role
            }
            _ if lower.starts_with(LABEL_PREFIX) => {
                let label = &raw_key[LABEL_PREFIX.len()..];
                if label.is_empty() {
                    return fail("missing label name after node.labels.".into());
                }
                ConstraintKey::Label(label.to_string())
            }
            _ => return fail(format!("unknown key {} ({KEY_HINT})", quoted(raw_key))),
        };
        Ok(Constraint {
            key,
            operator,
            value: value.to_string(),
        })
    }

    /// Parse every expression; the first error wins.
    pub fn parse_all(exprs: &[String]) -> Result<Vec<Constraint>, String> {
        exprs.iter().map(|e| Constraint::parse(e)).collect()
    }

    /// True when `node` satisfies the constraint.
    pub fn matches(&self, node: &Node) -> bool {
        let empty = String::new();
        let actual: &str = match &self.key {
            ConstraintKey::NodeId => &node.id,
            ConstraintKey::Hostname => node
                .description
                .as_ref()
                .map(|d| d.hostname.as_str())
                .unwrap_or(""),
            ConstraintKey::Role => {
                let role = node
                    .spec
                    .as_ref()
                    .map(|s| s.role())
                    .unwrap_or(NodeRole::Worker);
                match role {
                    NodeRole::Manager => "manager",
                    NodeRole::Worker => "worker",
                }
            }
            ConstraintKey::Label(key) => node
                .spec
                .as_ref()
                .and_then(|s| s.labels.get(key))
                .unwrap_or(&empty),
        };
        let equal = actual.eq_ignore_ascii_case(&self.value);
        match self.operator {
            Operator::Equal => equal,
            Operator::NotEqual => !equal,
        }
    }

    /// True when every constraint matches `node`.
    pub fn all_match(constraints: &[Constraint], node: &Node) -> bool {
        constraints.iter().all(|c| c.matches(node))
    }
}

impl fmt::Display for Constraint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.key {
            ConstraintKey::NodeId => f.write_str("node.id")?,
            ConstraintKey::Hostname => f.write_str("node.hostname")?,
            ConstraintKey::Role => f.write_str("node.role")?,
            ConstraintKey::Label(k) => write!(f, "{LABEL_PREFIX}{k}")?,
        }
        let op = match self.operator {
            Operator::Equal => "==",
            Operator::NotEqual => "!=",
        };
        write!(f, "{op}{}", self.value)
    }
}

/// Parse a spread preference descriptor (`node.labels.KEY`) into the label key.
pub fn parse_spread(descriptor: &str) -> Result<String, String> {
    let d = descriptor.trim();
    let valid_prefix = d.len() > LABEL_PREFIX.len()
        && d.is_char_boundary(LABEL_PREFIX.len())
        && d[..LABEL_PREFIX.len()].eq_ignore_ascii_case(LABEL_PREFIX);
    if !valid_prefix {
        return Err(format!(
            "spread preference {}: must be node.labels.KEY (spreading over node labels is the only kind supported)",
            quoted(descriptor)
        ));
    }
    let key = &d[LABEL_PREFIX.len()..];
    if key.chars().any(char::is_whitespace) {
        return Err(format!(
            "spread preference {}: label name {} contains whitespace",
            quoted(descriptor),
            quoted(key)
        ));
    }
    Ok(key.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1::{NodeDescription, NodeSpec};

    fn node(id: &str, host: &str, role: NodeRole, labels: &[(&str, &str)]) -> Node {
        Node {
            id: id.into(),
            spec: Some(NodeSpec {
                labels: labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                role: role as i32,
                ..Default::default()
            }),
            description: Some(NodeDescription {
                hostname: host.into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn parses_every_form() {
        let c = Constraint::parse("node.id==abc").unwrap();
        assert_eq!(c.key, ConstraintKey::NodeId);
        assert_eq!(c.operator, Operator::Equal);
        assert_eq!(c.value, "abc");
        let c = Constraint::parse("  node.hostname  !=  web-1 ").unwrap();
        assert_eq!(c.key, ConstraintKey::Hostname);
        assert_eq!(c.operator, Operator::NotEqual);
        assert_eq!(c.value, "web-1");
        let c = Constraint::parse("Node.Role==Manager").unwrap();
        assert_eq!(c.key, ConstraintKey::Role);
        let c = Constraint::parse("node.labels.Zone==east").unwrap();
        assert_eq!(c.key, ConstraintKey::Label("Zone".into()));
        assert_eq!(c.to_string(), "node.labels.Zone==east");
        let all =
            Constraint::parse_all(&["node.id==a".into(), "node.role!=worker".into()]).unwrap();
        assert_eq!(all.len(), 2);
    }

    #[test]
    fn errors_name_the_problem() {
        let e = Constraint::parse("node.foo==x").unwrap_err();
        assert_eq!(
            e,
            r#"constraint "node.foo==x": unknown key "node.foo" (use node.id, node.hostname, node.role or node.labels.KEY)"#
        );
        assert!(
            Constraint::parse("node.id=x")
                .unwrap_err()
                .contains("no == or != found")
        );
        assert!(
            Constraint::parse("==x")
                .unwrap_err()
                .contains("missing key")
        );
        assert!(
            Constraint::parse("node.id==")
                .unwrap_err()
                .contains("missing value")
        );
        assert!(
            Constraint::parse("node.role==boss")
                .unwrap_err()
                .contains("manager or worker")
        );
        assert!(
            Constraint::parse("node.labels.==a")
                .unwrap_err()
                .contains("missing label name")
        );
        assert!(
            Constraint::parse("node.id==a==b")
                .unwrap_err()
                .contains("more than one operator")
        );
        let e = Constraint::parse_all(&["node.id==a".into(), "bad".into()]).unwrap_err();
        assert!(e.starts_with("constraint \"bad\""), "{e}");
    }

    #[test]
    fn matches_nodes() {
        let n = node("n1", "web-1", NodeRole::Manager, &[("zone", "east")]);
        let m = |e: &str| Constraint::parse(e).unwrap().matches(&n);
        assert!(m("node.id==n1"));
        assert!(!m("node.id!=n1"));
        assert!(m("node.hostname==WEB-1"));
        assert!(m("node.role==manager"));
        assert!(!m("node.role==worker"));
        assert!(m("node.labels.zone==east"));
        assert!(!m("node.labels.zone!=east"));
        // A missing label reads as empty: == fails, != passes.
        assert!(!m("node.labels.rack==r1"));
        assert!(m("node.labels.rack!=r1"));
        // Label names are case-sensitive.
        assert!(!m("node.labels.ZONE==east"));
        let w = node("n2", "db", NodeRole::Worker, &[]);
        assert!(Constraint::parse("node.role==worker").unwrap().matches(&w));
        let cs =
            Constraint::parse_all(&["node.role==manager".into(), "node.labels.zone==east".into()])
                .unwrap();
        assert!(Constraint::all_match(&cs, &n));
        assert!(!Constraint::all_match(&cs, &w));
    }

    #[test]
    fn spread_descriptors() {
        assert_eq!(parse_spread("node.labels.zone").unwrap(), "zone");
        assert_eq!(parse_spread("Node.Labels.Rack").unwrap(), "Rack");
        assert!(
            parse_spread("node.labels.")
                .unwrap_err()
                .contains("must be node.labels.KEY")
        );
        assert!(
            parse_spread("node.hostname")
                .unwrap_err()
                .contains("must be node.labels.KEY")
        );
        assert!(parse_spread("").is_err());
    }
}
