//! The port-forwarding form: its fields as typed, parsed with the CLI's own
//! parsers, and each error placed beside the field it is about.
use std::collections::BTreeMap;

use crate::{
    api::RuleChange,
    rules::{ForwardRule, PortRange, Protocol, RuleError, Schedule, parse_allow, validate_name},
};

/// A field of the form.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Field {
    Name,
    Protocol,
    External,
    InternalAddr,
    Internal,
    Allow,
    Schedule,
    /// Not one field: shown above the form.
    Form,
}

impl Field {
    /// The field a rule error is about.
    pub fn of(error: &RuleError) -> Self {
        match error {
            RuleError::Name(_) | RuleError::DuplicateName(_) | RuleError::NotFound(_) => {
                Field::Name
            }
            RuleError::Protocol(_) => Field::Protocol,
            RuleError::Overlap { .. } | RuleError::InUseByMapping { .. } => Field::External,
            RuleError::Address(_)
            | RuleError::OutsideLan { .. }
            | RuleError::NotAHost { .. }
            | RuleError::RouterAddress { .. }
            | RuleError::SharedTarget { .. } => Field::InternalAddr,
            RuleError::RangeSize { .. } => Field::Internal,
            RuleError::Allow(_) => Field::Allow,
            RuleError::Schedule(_) => Field::Schedule,
            _ => Field::Form,
        }
    }
}

/// The form as the browser sent it (or as a rule fills it).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RuleForm {
    /// For a modification: the rule's name before it.
    pub original: Option<String>,
    pub name: String,
    pub protocol: String,
    pub external: String,
    pub internal_addr: String,
    /// Empty: the same as the external ports.
    pub internal: String,
    /// Prefixes separated by commas or spaces; empty: any remote.
    pub allow: String,
    /// As `--schedule`, e.g. "mon-fri 09:00-18:00"; empty: always.
    pub schedule: String,
    pub enabled: bool,
}

/// Errors by field, each the CLI's own message.
pub type FieldErrors = BTreeMap<Field, String>;

impl RuleForm {
    pub fn from_pairs(pairs: &[(String, String)]) -> Self {
        let get = |key: &str| {
            pairs
                .iter()
                .find(|(name, _)| name == key)
                .map(|(_, value)| value.trim().to_owned())
        };
        Self {
            original: get("original").filter(|name| !name.is_empty()),
            name: get("name").unwrap_or_default(),
            protocol: get("protocol").unwrap_or_default(),
            external: get("external").unwrap_or_default(),
            internal_addr: get("internal_addr").unwrap_or_default(),
            internal: get("internal").unwrap_or_default(),
            allow: get("allow").unwrap_or_default(),
            schedule: get("schedule").unwrap_or_default(),
            enabled: get("enabled").is_some(),
        }
    }

    pub fn from_rule(rule: &ForwardRule) -> Self {
        Self {
            original: Some(rule.name.clone()),
            name: rule.name.clone(),
            protocol: rule.protocol.to_string(),
            external: rule.external.to_string(),
            internal_addr: rule.internal_addr.to_string(),
            internal: if rule.internal == rule.external {
                String::new()
            } else {
                rule.internal.to_string()
            },
            allow: rule
                .allow
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", "),
            schedule: if rule.schedule.is_always() {
                String::new()
            } else {
                rule.schedule.to_string()
            },
            enabled: rule.enabled,
        }
    }

    /// The rule the form describes, or every field's error.
    pub fn rule(&self) -> Result<ForwardRule, FieldErrors> {
        let mut errors = FieldErrors::new();
        let mut check = |field, result: Result<(), RuleError>| {
            if let Err(error) = result {
                errors.entry(field).or_insert_with(|| error.to_string());
            }
        };
        check(Field::Name, validate_name(&self.name));
        let protocol = self.protocol.parse::<Protocol>();
        let external = self.external.parse::<PortRange>();
        let internal_addr = self
            .internal_addr
            .parse()
            .map_err(|_| RuleError::Address(self.internal_addr.clone()));
        let internal = if self.internal.is_empty() {
            external.clone()
        } else {
            self.internal.parse::<PortRange>()
        };
        let allow: Result<Vec<_>, _> = self
            .allow
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|part| !part.is_empty())
            .map(parse_allow)
            .collect();
        check(Field::Protocol, protocol.clone().map(drop));
        check(Field::External, external.clone().map(drop));
        check(Field::InternalAddr, internal_addr.clone().map(drop));
        if !self.internal.is_empty() {
            check(Field::Internal, internal.clone().map(drop));
        }
        check(Field::Allow, allow.clone().map(drop));
        let schedule = if self.schedule.is_empty() {
            Ok(Schedule::default())
        } else {
            self.schedule.parse::<Schedule>().map_err(RuleError::from)
        };
        check(Field::Schedule, schedule.clone().map(drop));
        match (protocol, external, internal_addr, internal, allow, schedule) {
            (
                Ok(protocol),
                Ok(external),
                Ok(internal_addr),
                Ok(internal),
                Ok(allow),
                Ok(schedule),
            ) if errors.is_empty() => Ok(ForwardRule {
                name: self.name.clone(),
                protocol,
                external,
                internal_addr,
                internal,
                allow,
                enabled: self.enabled,
                upnp: None,
                schedule,
                off_schedule: false,
            }),
            _ => Err(errors),
        }
    }

    /// The change that turns the rule into what the form says: every field
    /// given, so the rule becomes exactly the form.
    pub fn change(&self) -> Result<RuleChange, FieldErrors> {
        let rule = self.rule()?;
        Ok(RuleChange {
            name: Some(rule.name),
            protocol: Some(rule.protocol),
            external: Some(rule.external),
            internal_addr: Some(rule.internal_addr),
            internal: Some(rule.internal),
            allow: Some(rule.allow),
            enabled: Some(rule.enabled),
            schedule: Some(rule.schedule),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(pairs: &[(&str, &str)]) -> RuleForm {
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(key, value)| ((*key).to_owned(), (*value).to_owned()))
            .collect();
        RuleForm::from_pairs(&pairs)
    }

    #[test]
    fn a_form_becomes_the_rule_the_cli_would_make() {
        let rule = form(&[
            ("name", "ssh"),
            ("protocol", "tcp"),
            ("external", "2222"),
            ("internal_addr", "192.168.0.12"),
            ("internal", "22"),
            ("allow", "198.51.100.0/24, 203.0.113.7"),
            ("schedule", "mon-fri 09:00-18:00"),
            ("enabled", "on"),
        ])
        .rule()
        .unwrap();
        let mut cli: ForwardRule = "tcp/2222=192.168.0.12:22,allow=198.51.100.0/24,\
                                    allow=203.0.113.7/32,name=ssh"
            .parse()
            .unwrap();
        cli.schedule = "mon-fri 09:00-18:00".parse().unwrap();
        assert_eq!(rule, cli);
        assert_eq!(RuleForm::from_rule(&rule).rule().unwrap(), rule);
    }

    #[test]
    fn each_error_is_the_cli_message_beside_its_field() {
        let errors = form(&[
            ("name", "bad name"),
            ("protocol", "sctp"),
            ("external", "70000"),
            ("internal_addr", "192.168.0"),
            ("allow", "nowhere"),
            ("schedule", "someday"),
        ])
        .rule()
        .unwrap_err();
        assert_eq!(
            errors[&Field::Schedule],
            "someday".parse::<Schedule>().unwrap_err().to_string()
        );
        assert_eq!(
            errors[&Field::Name],
            RuleError::Name("bad name".into()).to_string()
        );
        assert_eq!(
            errors[&Field::Protocol],
            RuleError::Protocol("sctp".into()).to_string()
        );
        assert_eq!(
            errors[&Field::External],
            RuleError::Port("70000".into()).to_string()
        );
        assert_eq!(
            errors[&Field::InternalAddr],
            RuleError::Address("192.168.0".into()).to_string()
        );
        assert_eq!(
            errors[&Field::Allow],
            RuleError::Allow("nowhere".into()).to_string()
        );
        assert!(!errors.contains_key(&Field::Internal), "left empty");
        let outside = RuleError::OutsideLan {
            name: "x".into(),
            addr: "10.0.0.1".parse().unwrap(),
            lan: "192.168.0.0/24".parse().unwrap(),
        };
        assert_eq!(Field::of(&outside), Field::InternalAddr);
    }
}
