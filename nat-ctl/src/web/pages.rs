//! The admin page's HTML. maud escapes every value put into the markup,
//! so a rule name or a UPnP client's description cannot become markup.
use maud::{DOCTYPE, Markup, html};

use super::form::{Field, FieldErrors, RuleForm};
use crate::{
    api::{ConnectionRecord, ListedRule},
    table::{Stats, TableRow},
};

/// Which page is shown, for the navigation bar.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Page {
    Forwarding,
    Table,
    Mappings,
    Traffic,
    Log,
}

const PAGES: &[(Page, &str, &str)] = &[
    (Page::Forwarding, "/forwarding", "Port forwarding"),
    (Page::Table, "/table", "NAT table"),
    (Page::Mappings, "/mappings", "UPnP / NAT-PMP"),
    (Page::Traffic, "/traffic", "Traffic"),
    (Page::Log, "/log", "Connection log"),
];

fn head(title: &str) -> Markup {
    html! {
        head {
            meta charset="utf-8";
            meta name="viewport" content="width=device-width, initial-scale=1";
            title { (title) " - natctl" }
            link rel="stylesheet" href="/assets/style.css";
        }
    }
}

/// A page of a logged-in session: navigation, logout, `body`.
pub fn layout(page: Page, csrf: &str, body: Markup) -> Markup {
    let title = PAGES
        .iter()
        .find(|(of, _, _)| *of == page)
        .map_or("natctl", |(_, _, title)| title);
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
            body {
                header {
                    nav {
                        span.brand { "natctl" }
                        @for (of, href, label) in PAGES {
                            a href=(href) class=[(*of == page).then_some("current")] { (label) }
                        }
                        form.logout method="post" action="/logout" {
                            (csrf_field(csrf))
                            button type="submit" { "Log out" }
                        }
                    }
                }
                main {
                    h1 { (title) }
                    (body)
                }
            }
        }
    }
}

fn csrf_field(csrf: &str) -> Markup {
    html! { input type="hidden" name="csrf" value=(csrf); }
}

pub fn login(csrf: &str, error: Option<&str>) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head("Log in"))
            body {
                main.login {
                    h1 { "natctl router" }
                    form method="post" action="/login" {
                        (csrf_field(csrf))
                        @if let Some(error) = error {
                            p.error id="login-error" { (error) }
                        }
                        label for="password" { "Password" }
                        input id="password" type="password" name="password"
                            autocomplete="current-password" required autofocus;
                        button id="login" type="submit" { "Log in" }
                    }
                }
            }
        }
    }
}

/// A text field with its label and, below it, its error.
fn text_field(
    id: &str,
    label: &str,
    value: &str,
    placeholder: &str,
    field: Field,
    errors: &FieldErrors,
) -> Markup {
    let error = errors.get(&field);
    html! {
        div.field {
            label for=(id) { (label) }
            input id=(id) name=(id) type="text" value=(value) placeholder=(placeholder)
                aria-invalid=[error.map(|_| "true")];
            @if let Some(error) = error {
                p.error id={(id) "-error"} { (error) }
            }
        }
    }
}

pub fn forwarding(
    rules: &[ListedRule],
    form: &RuleForm,
    errors: &FieldErrors,
    csrf: &str,
    notice: Option<&str>,
) -> Markup {
    let editing = form.original.is_some();
    let statics: Vec<&ListedRule> = rules.iter().filter(|r| r.rule.upnp.is_none()).collect();
    let body = html! {
        @if let Some(notice) = notice {
            p.notice id="notice" { (notice) }
        }
        div.scroll {
            table id="rules" {
                thead { tr {
                    th { "Name" } th { "Protocol" } th { "External port" }
                    th { "Internal IP" } th { "Internal port" } th { "Allowed remotes" }
                    th { "Schedule" } th { "Enabled" } th { "Packets in/out" } th {}
                } }
                tbody {
                    @if statics.is_empty() {
                        tr { td colspan="10" { "No port-forwarding rules yet." } }
                    }
                    @for listed in &statics {
                        @let rule = &listed.rule;
                        tr data-rule=(rule.name) {
                            td data-label="Name" { (rule.name) }
                            td data-label="Protocol" { (rule.protocol.to_string().to_uppercase()) }
                            td data-label="External port" { (rule.external) }
                            td data-label="Internal IP" { (rule.internal_addr) }
                            td data-label="Internal port" { (rule.internal) }
                            td data-label="Allowed remotes" { (rule.allowed_remotes()) }
                            td data-label="Schedule" {
                                (rule.schedule)
                                @if let Some(state) = &listed.schedule_state {
                                    " (" (if state.on { "on" } else { "off" }) " now"
                                    @if let Some(until) = &state.until_local { ", until " (until) }
                                    ")"
                                }
                            }
                            td data-label="Enabled" { @if rule.enabled { "yes" } @else { "no" } }
                            td data-label="Packets in/out" {
                                (listed.inbound.packets) " / " (listed.outbound.packets)
                            }
                            td.actions {
                                a.button href={"/forwarding?edit=" (urlencode(&rule.name))} { "Modify" }
                                form method="post" action={"/forwarding/" (if rule.enabled { "disable" } else { "enable" })} {
                                    (csrf_field(csrf))
                                    input type="hidden" name="name" value=(rule.name);
                                    button type="submit" {
                                        @if rule.enabled { "Disable" } @else { "Enable" }
                                    }
                                }
                                form method="post" action="/forwarding/delete" {
                                    (csrf_field(csrf))
                                    input type="hidden" name="name" value=(rule.name);
                                    button.danger type="submit" { "Delete" }
                                }
                            }
                        }
                    }
                }
            }
        }
        h2 { @if editing { "Modify rule " (form.original.as_deref().unwrap_or("")) } @else { "Add a rule" } }
        form id="rule-form" method="post" action=(if editing { "/forwarding/modify" } else { "/forwarding/add" }) {
            (csrf_field(csrf))
            @if let Some(original) = &form.original {
                input type="hidden" name="original" value=(original);
            }
            @if let Some(error) = errors.get(&Field::Form) {
                p.error id="form-error" { (error) }
            }
            div.grid {
                (text_field("name", "Rule name", &form.name, "ssh", Field::Name, errors))
                div.field {
                    label for="protocol" { "Protocol" }
                    select id="protocol" name="protocol" {
                        @for (value, label) in [("tcp", "TCP"), ("udp", "UDP"), ("both", "TCP and UDP")] {
                            option value=(value) selected[form.protocol.eq_ignore_ascii_case(value)] { (label) }
                        }
                    }
                    @if let Some(error) = errors.get(&Field::Protocol) {
                        p.error id="protocol-error" { (error) }
                    }
                }
                (text_field("external", "External port or range", &form.external, "2222 or 6881-6889", Field::External, errors))
                (text_field("internal_addr", "Internal IP", &form.internal_addr, "192.168.0.12", Field::InternalAddr, errors))
                (text_field("internal", "Internal port (empty: the same)", &form.internal, "22", Field::Internal, errors))
                (text_field("allow", "Allowed remotes (empty: any)", &form.allow, "198.51.100.0/24", Field::Allow, errors))
                (text_field("schedule", "Schedule (empty: always)", &form.schedule, "mon-fri 09:00-18:00", Field::Schedule, errors))
                div.field.check {
                    label {
                        input id="enabled" type="checkbox" name="enabled" checked[form.enabled];
                        " Enabled"
                    }
                }
            }
            button id="save" type="submit" { @if editing { "Save" } @else { "Add" } }
            @if editing { " " a href="/forwarding" { "Cancel" } }
        }
    };
    layout(Page::Forwarding, csrf, body)
}

/// The filter fields of the NAT table page, as typed.
#[derive(Clone, Debug, Default)]
pub struct TableQuery {
    pub protocol: String,
    pub address: String,
    pub port: String,
    pub kind: String,
}

fn timeout(secs: Option<u64>) -> String {
    match secs {
        None => "permanent".to_owned(),
        Some(secs) if secs >= 3600 => format!("{}h{:02}m", secs / 3600, secs % 3600 / 60),
        Some(secs) if secs >= 60 => format!("{}m{:02}s", secs / 60, secs % 60),
        Some(secs) => format!("{secs}s"),
    }
}

pub fn table(rows: &[TableRow], query: &TableQuery, error: Option<&str>, csrf: &str) -> Markup {
    let any = |value: &Option<String>| value.clone().unwrap_or_else(|| "any".to_owned());
    let body = html! {
        form.filters method="get" action="/table" {
            div.field {
                label for="f-protocol" { "Protocol" }
                select id="f-protocol" name="protocol" {
                    @for value in ["", "tcp", "udp", "icmp", "gre", "esp", "ah"] {
                        option value=(value) selected[query.protocol == value] {
                            @if value.is_empty() { "any" } @else { (value.to_uppercase()) }
                        }
                    }
                }
            }
            div.field {
                label for="f-address" { "Address" }
                input id="f-address" type="text" name="address" value=(query.address) placeholder="192.168.0.12";
            }
            div.field {
                label for="f-port" { "Port" }
                input id="f-port" type="text" name="port" value=(query.port) placeholder="443";
            }
            div.field {
                label for="f-type" { "Type" }
                select id="f-type" name="type" {
                    @for value in ["", "static", "dynamic", "upnp", "natpmp", "pcp"] {
                        option value=(value) selected[query.kind.eq_ignore_ascii_case(value)] {
                            @if value.is_empty() { "any" } @else { (value.to_uppercase()) }
                        }
                    }
                }
            }
            button type="submit" { "Filter" }
        }
        @if let Some(error) = error {
            p.error id="filter-error" { (error) }
        }
        div.scroll {
            table id="nat-table" {
                thead { tr {
                    th { "Local IP" } th { "Local port" } th { "External" } th { "Remote IP" }
                    th { "Remote port" } th { "Protocol" } th { "Type" } th { "Timeout" }
                    th { "State" } th { "Packets" } th { "Bytes" } th { "Rule" }
                } }
                tbody {
                    @if rows.is_empty() { tr { td colspan="12" { "No entries." } } }
                    @for row in rows {
                        tr {
                            td data-label="Local IP" { (row.local_ip) }
                            td data-label="Local port" { (row.local_port) }
                            td data-label="External" { (row.external_port) }
                            td data-label="Remote IP" { (row.remote_ip.map_or("any".to_owned(), |ip| ip.to_string())) }
                            td data-label="Remote port" { (row.remote_port.map_or("any".to_owned(), |port| port.to_string())) }
                            td data-label="Protocol" { (row.protocol) }
                            td data-label="Type" { (row.kind) }
                            td data-label="Timeout" { (timeout(row.timeout_secs)) }
                            td data-label="State" { (any(&row.state)) }
                            td data-label="Packets" { (row.packets) }
                            td data-label="Bytes" { (row.bytes) }
                            td data-label="Rule" { (row.rule.clone().unwrap_or_default()) }
                        }
                    }
                }
            }
        }
    };
    layout(Page::Table, csrf, body)
}

pub fn mappings(
    rules: &[ListedRule],
    upnp: bool,
    natpmp: bool,
    unix_now: u64,
    csrf: &str,
    notice: Option<&str>,
) -> Markup {
    let leased: Vec<&ListedRule> = rules.iter().filter(|r| r.rule.upnp.is_some()).collect();
    let switch = |action: &str, label: &str, on: bool| {
        html! {
            form.switch method="post" action=(action) {
                (csrf_field(csrf))
                input type="hidden" name="on" value=(if on { "0" } else { "1" });
                span { (label) ": " strong { @if on { "on" } @else { "off" } } }
                " "
                button type="submit" { "Switch " @if on { "off" } @else { "on" } }
            }
        }
    };
    let body = html! {
        @if let Some(notice) = notice { p.notice id="notice" { (notice) } }
        div.switches {
            (switch("/mappings/upnp", "UPnP IGD", upnp))
            (switch("/mappings/natpmp", "NAT-PMP and PCP", natpmp))
        }
        p.hint { "Switching a protocol off also removes the mappings its clients made." }
        div.scroll {
            table id="mappings" {
                thead { tr {
                    th { "Protocol" } th { "Client" } th { "External" } th { "Internal" }
                    th { "Description" } th { "Lease left" } th { "Name" } th {}
                } }
                tbody {
                    @if leased.is_empty() { tr { td colspan="8" { "No client mappings." } } }
                    @for listed in &leased {
                        @let rule = &listed.rule;
                        @let lease = rule.upnp.as_ref().expect("filtered");
                        tr {
                            td data-label="Protocol" { (lease.origin.protocol_name()) " " (rule.protocol.to_string().to_uppercase()) }
                            td data-label="Client" { (lease.client) }
                            td data-label="External" { (rule.external) }
                            td data-label="Internal" { (rule.internal_addr) ":" (rule.internal) }
                            td data-label="Description" { (lease.description) }
                            td data-label="Lease left" { (timeout(lease.expires_at.map(|at| at.saturating_sub(unix_now)))) }
                            td data-label="Name" { (rule.name) }
                            td.actions {
                                form method="post" action="/mappings/delete" {
                                    (csrf_field(csrf))
                                    input type="hidden" name="name" value=(rule.name);
                                    button.danger type="submit" { "Delete" }
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    layout(Page::Mappings, csrf, body)
}

pub fn traffic(stats: &Stats, csrf: &str) -> Markup {
    let body = html! {
        section.chart {
            h2 { "Packets per second" }
            canvas id="pps" width="600" height="200" data-source="/traffic.json" {}
            p.legend { span.lan { "LAN in" } " " span.wan { "WAN in" } }
        }
        h2 { "Counters" }
        div.scroll {
            table id="counters" {
                thead { tr { th { "Counter" } th { "Packets" } th { "Bytes" } } }
                tbody {
                    @for (label, traffic) in &stats.counters {
                        tr {
                            td data-label="Counter" { (label) }
                            td data-label="Packets" { (traffic.packets) }
                            td data-label="Bytes" { (traffic.bytes) }
                        }
                    }
                }
            }
        }
        h2 { "Per rule" }
        div.scroll {
            table id="rule-counters" {
                thead { tr { th { "Rule" } th { "In packets" } th { "In bytes" } th { "Out packets" } th { "Out bytes" } } }
                tbody {
                    @for rule in &stats.rules {
                        tr {
                            td data-label="Rule" { (rule.name) }
                            td data-label="In packets" { (rule.inbound.packets) }
                            td data-label="In bytes" { (rule.inbound.bytes) }
                            td data-label="Out packets" { (rule.outbound.packets) }
                            td data-label="Out bytes" { (rule.outbound.bytes) }
                        }
                    }
                }
            }
        }
        p { "Dynamic mappings: " (stats.dynamic_mappings) }
        script src="/assets/chart.js" {}
    };
    layout(Page::Traffic, csrf, body)
}

/// The daemon's connection log (`natctl connections`), newest first.
pub fn log(records: &[ConnectionRecord], csrf: &str) -> Markup {
    let body = html! {
        p.hint { "New inbound connections on forwarded ports since the daemon started, newest first, as " code { "natctl connections" } " lists them." }
        div.scroll {
            table id="connections" {
                thead { tr {
                    th { "When" } th { "Protocol" } th { "Remote" } th { "External port" }
                    th { "LAN server" } th { "Rule" }
                } }
                tbody {
                    @if records.is_empty() { tr { td colspan="6" { "No connections yet." } } }
                    @for record in records.iter().rev() {
                        tr {
                            td data-label="When" { (record.time) }
                            td data-label="Protocol" { (record.protocol) }
                            td data-label="Remote" { (record.remote) }
                            td data-label="External port" { (record.external_port) }
                            td data-label="LAN server" { (record.server) }
                            td data-label="Rule" { (record.rule) }
                        }
                    }
                }
            }
        }
    };
    layout(Page::Log, csrf, body)
}

/// A page without a session: an error and where to go.
pub fn message(title: &str, text: &str) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
            body { main.login { h1 { (title) } p { (text) } p { a href="/login" { "Log in" } } } }
        }
    }
}

fn urlencode(text: &str) -> String {
    form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        rules::{ForwardRule, Lease, LeaseOrigin},
        table::Traffic,
    };

    #[test]
    fn values_are_escaped_wherever_they_go() {
        let mut rule: ForwardRule = "tcp/2222=192.168.0.12:22,name=ssh".parse().unwrap();
        rule.upnp = Some(Lease {
            origin: LeaseOrigin::Upnp,
            client: "192.168.0.12".parse().unwrap(),
            description: "<script>alert(1)</script>\"&'".into(),
            expires_at: None,
            nonce: None,
        });
        let listed = ListedRule {
            rule,
            id: 1,
            inbound: Traffic::default(),
            outbound: Traffic::default(),
            schedule_state: None,
        };
        let html = mappings(&[listed], true, false, 0, "tok\"en", None).into_string();
        assert!(!html.contains("<script>alert"), "{html}");
        assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;&quot;&amp;'"));
        assert!(html.contains("value=\"tok&quot;en\""), "{html}");

        let form = RuleForm {
            name: "\"><img src=x onerror=alert(1)>".into(),
            ..RuleForm::default()
        };
        let mut errors = FieldErrors::new();
        errors.insert(Field::Name, "bad <name>".into());
        let html = forwarding(&[], &form, &errors, "t", Some("<b>")).into_string();
        assert!(!html.contains("<img"), "{html}");
        assert!(html.contains("value=\"&quot;&gt;&lt;img"), "{html}");
        assert!(html.contains("bad &lt;name&gt;"));
        assert!(html.contains("&lt;b&gt;"));
        let html = login("t", Some("<i>")).into_string();
        assert!(html.contains("&lt;i&gt;") && !html.contains("<i>"));
    }

    #[test]
    fn an_edit_link_encodes_the_name() {
        assert_eq!(urlencode("a b&c"), "a+b%26c");
    }
}
