//! Who may publish and subscribe where on the embedded broker.
//!
//! `[[broker.acl]]` rules are checked first, in order, and the first that matches
//! decides; then the base policy (`broker.access`): "open" lets everything through,
//! "car2home" is a rule list of its own that fits the Car2Home topics and denies what
//! it does not name. The daemon's own processes (user `smarthomed`) are never checked.
//! A subscription passes only when every topic its filter can match is allowed, so
//! `#` passes only a rule for `#`. The Car2Home apps publish their 9-digit controls
//! straight to the ESP32's topic, so "car2home" lets a publish there through when its
//! payload is a control the codec accepts, and nothing else. Plain functions over plain
//! data; the engine's hook calls [`Policy::allows`] and [`Policy::allows_publish`].

use crate::config::{AccessPolicy, AclAccess, AclPermission, AclRule};
use crate::protocol::appliance::Control;
use crate::protocol::topics::APPLIANCE_CONTROL_TOPIC;

/// What a client asks to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Publish,
    Subscribe,
}

/// Who asks.
#[derive(Debug, Clone, Copy)]
pub struct Identity<'a> {
    pub user: Option<&'a str>,
    pub client_id: &'a str,
}

/// Client ids of robots: `robot-<robotId>`; `%r` in a rule stands for the robot id.
const ROBOT_CLIENT_PREFIX: &str = "robot-";
/// Client id the Car2Home ESP32 firmware connects with.
const APPLIANCE_CLIENT_ID: &str = "PSW_Arduino";

#[derive(Debug, Clone)]
pub struct Policy {
    rules: Vec<AclRule>,
    base: AccessPolicy,
    car2home: Vec<AclRule>,
}

impl Policy {
    pub fn new(rules: &[AclRule], base: AccessPolicy) -> Self {
        Self { rules: rules.to_vec(), base, car2home: car2home_rules() }
    }

    /// Whether `who` may subscribe to the filter `topic`, or publish to `topic` whatever
    /// the payload.
    pub fn allows(&self, who: &Identity<'_>, access: Access, topic: &str) -> bool {
        self.decide(who, access, topic, None)
    }

    /// Whether `who` may publish `payload` to `topic`.
    pub fn allows_publish(&self, who: &Identity<'_>, topic: &str, payload: &[u8]) -> bool {
        self.decide(who, Access::Publish, topic, Some(payload))
    }

    fn decide(&self, who: &Identity<'_>, access: Access, topic: &str, payload: Option<&[u8]>) -> bool {
        // `$` topics are the broker's own (`$SYS`), whatever the rules say.
        if access == Access::Publish && topic.starts_with('$') {
            return false;
        }
        // A shared subscription (`$share/<group>/<filter>`) reads what its filter reads.
        let topic = match access {
            Access::Subscribe => shared_filter(topic).unwrap_or(topic),
            Access::Publish => topic,
        };
        if let Some(permission) = first_match(&self.rules, who, access, topic) {
            return permission == AclPermission::Allow;
        }
        match self.base {
            AccessPolicy::Open => true,
            AccessPolicy::Car2home => {
                first_match(&self.car2home, who, access, topic) == Some(AclPermission::Allow)
                    || (access == Access::Publish
                        && topic == APPLIANCE_CONTROL_TOPIC
                        && payload.is_some_and(is_control))
            }
        }
    }
}

/// The filter of a shared subscription `$share/<group>/<filter>`.
fn shared_filter(filter: &str) -> Option<&str> {
    let (group, filter) = filter.strip_prefix("$share/")?.split_once('/')?;
    (!group.is_empty() && !filter.is_empty()).then_some(filter)
}

/// Whether `payload` is a 9-digit control string the ESP32 can apply.
fn is_control(payload: &[u8]) -> bool {
    std::str::from_utf8(payload).is_ok_and(|text| Control::parse(text).is_ok())
}

fn first_match(rules: &[AclRule], who: &Identity<'_>, access: Access, topic: &str) -> Option<AclPermission> {
    rules.iter().find(|rule| applies(rule, who, access, topic)).map(|rule| rule.permission)
}

fn applies(rule: &AclRule, who: &Identity<'_>, access: Access, topic: &str) -> bool {
    let covers_access = match (rule.access, access) {
        (AclAccess::ReadWrite, _) | (AclAccess::Read, Access::Subscribe) | (AclAccess::Write, Access::Publish) => true,
        (AclAccess::Read, Access::Publish) | (AclAccess::Write, Access::Subscribe) => false,
    };
    let covers_who = match rule.who.as_str() {
        "*" => true,
        "$anonymous" => who.user.is_none(),
        "$accounts" => who.user.is_some(),
        name => who.user == Some(name),
    };
    if !covers_access || !covers_who || rule.client_id.as_deref().is_some_and(|id| id != who.client_id) {
        return false;
    }
    let Some(pattern) = substitute(&rule.topic, who) else { return false };
    match access {
        Access::Publish => matches(&pattern, topic),
        Access::Subscribe => covers(&pattern, topic),
    }
}

/// The rule's topic with `%u`, `%c` and `%r` filled in; None when one is asked for but
/// missing, or would smuggle in a wildcard or a level ("#" as a user name).
fn substitute(pattern: &str, who: &Identity<'_>) -> Option<String> {
    let mut out = pattern.to_owned();
    let robot = who.client_id.strip_prefix(ROBOT_CLIENT_PREFIX);
    for (placeholder, value) in [("%u", who.user), ("%c", Some(who.client_id)), ("%r", robot)] {
        if !out.contains(placeholder) {
            continue;
        }
        let value = value.filter(|value| !value.is_empty() && !value.contains(['+', '#', '/']))?;
        out = out.replace(placeholder, value);
    }
    Some(out)
}

/// Whether the topic filter `pattern` matches the topic name `topic`.
fn matches(pattern: &str, topic: &str) -> bool {
    // A wildcard at the first level never matches a `$` topic (MQTT 4.7.2).
    if topic.starts_with('$') && pattern.starts_with(['+', '#']) {
        return false;
    }
    let mut topic_levels = topic.split('/');
    for level in pattern.split('/') {
        match level {
            "#" => return true,
            "+" => {
                if topic_levels.next().is_none() {
                    return false;
                }
            }
            literal => {
                if topic_levels.next() != Some(literal) {
                    return false;
                }
            }
        }
    }
    topic_levels.next().is_none()
}

/// Whether every topic the filter `filter` can match is matched by `pattern`.
fn covers(pattern: &str, filter: &str) -> bool {
    if filter.starts_with('$') != pattern.starts_with('$') && pattern.starts_with(['+', '#']) {
        return false;
    }
    let mut filter_levels = filter.split('/');
    for level in pattern.split('/') {
        match (level, filter_levels.next()) {
            ("#", _) => return true,
            (_, None) => return false,
            (_, Some("#")) => return false,
            ("+", Some(_)) => {}
            (literal, Some(asked)) => {
                if asked != literal {
                    return false;
                }
            }
        }
    }
    filter_levels.next().is_none()
}

/// The Car2Home policy: apps send commands and read their replies and the home's
/// state; the ESP32 and robots use their own topics; only the daemon writes replies,
/// controls, state, availability and robot commands.
fn car2home_rules() -> Vec<AclRule> {
    let rule = |who: &str, client_id: Option<&str>, topic: &str, access| AclRule {
        who: who.into(),
        client_id: client_id.map(str::to_owned),
        topic: topic.into(),
        access,
        permission: AclPermission::Allow,
    };
    let deny =
        |who: &str, topic: &str, access| AclRule { permission: AclPermission::Deny, ..rule(who, None, topic, access) };
    use AclAccess::{Read, ReadWrite, Write};
    vec![
        rule("*", None, "webos/server/#", Write),
        rule("$accounts", None, "webos/%u/#", ReadWrite),
        deny("$anonymous", "webos/server/#", Read),
        rule("$anonymous", None, "webos/+/#", Read),
        rule("*", Some(APPLIANCE_CLIENT_ID), "webos/smarthome/#", Read),
        rule("*", Some(APPLIANCE_CLIENT_ID), "data/smarthome", Write),
        rule("*", None, "smarthomed/#", Read),
        rule("*", None, "homeassistant/#", Read),
        rule("*", None, "$SYS/broker/#", Read),
        // Home Assistant's commands (validated by the processor like an app's) and its
        // birth message, which asks for discovery again (the default discovery prefix).
        rule("*", None, "smarthomed/ha/+/set", Write),
        rule("*", None, "homeassistant/status", Write),
        rule("*", None, "smarthomed/robot/v1/+/estop/request", Write),
        rule("*", None, "smarthomed/robot/v1/%r/connection", Write),
        rule("*", None, "smarthomed/robot/v1/%r/state", Write),
        rule("*", None, "smarthomed/robot/v1/%r/telemetry", Write),
        rule("*", None, "smarthomed/robot/v1/%r/factsheet", Write),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    const APP: Identity<'static> = Identity { user: Some("android"), client_id: "phone-1" };
    const ANONYMOUS: Identity<'static> = Identity { user: None, client_id: "tv" };
    const ROBOT: Identity<'static> = Identity { user: Some("fleet"), client_id: "robot-vac1" };
    const ESP32: Identity<'static> = Identity { user: None, client_id: APPLIANCE_CLIENT_ID };

    fn car2home() -> Policy {
        Policy::new(&[], AccessPolicy::Car2home)
    }

    #[test]
    fn topic_matching_follows_mqtt_wildcards() {
        assert!(matches("a/+/c", "a/b/c"));
        assert!(matches("a/#", "a"));
        assert!(matches("a/#", "a/b/c"));
        assert!(!matches("a/+", "a/b/c"));
        assert!(!matches("a/b", "a/b/c"));
        assert!(!matches("#", "$SYS/broker/uptime"));
        assert!(matches("$SYS/#", "$SYS/broker/uptime"));
    }

    #[test]
    fn a_filter_is_covered_only_when_everything_it_matches_is() {
        assert!(covers("smarthomed/#", "smarthomed/+/availability"));
        assert!(covers("webos/+/info", "webos/android/info"));
        assert!(covers("webos/+/info", "webos/+/info"));
        assert!(!covers("webos/+/info", "webos/#"));
        assert!(!covers("smarthomed/#", "#"));
        assert!(!covers("webos/android/info", "webos/+/info"));
        assert!(!covers("a/b", "a/b/c"));
    }

    #[test]
    fn car2home_apps_send_commands_and_read_replies_but_forge_nothing() {
        let policy = car2home();
        assert!(policy.allows(&APP, Access::Publish, "webos/server/info"));
        assert!(policy.allows(&APP, Access::Subscribe, "webos/android/#"));
        assert!(policy.allows(&APP, Access::Subscribe, "smarthomed/recommendation"));
        assert!(!policy.allows(&APP, Access::Subscribe, "#"));
        assert!(!policy.allows(&APP, Access::Subscribe, "webos/car/info"));
        assert!(!policy.allows(&APP, Access::Publish, "webos/car/info"));
        assert!(!policy.allows(&APP, Access::Publish, "smarthomed/processor/availability"));
        assert!(!policy.allows(&APP, Access::Publish, "smarthomed/appliance/state"));
        assert!(!policy.allows(&ANONYMOUS, Access::Publish, "webos/android/info"));
        assert!(policy.allows(&ANONYMOUS, Access::Subscribe, "webos/android/info"));
        assert!(policy.allows(&ANONYMOUS, Access::Subscribe, "webos/android/#"));
        assert!(!policy.allows(&ANONYMOUS, Access::Subscribe, "webos/server/info"));
        assert!(!policy.allows(&ANONYMOUS, Access::Subscribe, "webos/#"));
        assert!(policy.allows(&ANONYMOUS, Access::Subscribe, "$SYS/broker/#"));
    }

    #[test]
    fn car2home_apps_send_the_esp32_only_valid_controls() {
        let policy = car2home();
        for who in [APP, ANONYMOUS] {
            assert!(policy.allows_publish(&who, "webos/smarthome/info", b"009060210"));
            assert!(!policy.allows_publish(&who, "webos/smarthome/info", b"0090602100"));
            assert!(!policy.allows_publish(&who, "webos/smarthome/info", b"03906021x"));
            assert!(!policy.allows_publish(&who, "webos/smarthome/info", b"\xff\xfe"));
            assert!(!policy.allows_publish(&who, "webos/smarthome/info", b""));
            assert!(!policy.allows(&who, Access::Publish, "webos/smarthome/info"));
            assert!(!policy.allows_publish(&who, "webos/smarthome/warning", b"009060210"));
        }
        let no_controls = [AclRule {
            who: "*".into(),
            client_id: None,
            topic: "webos/smarthome/info".into(),
            access: AclAccess::Write,
            permission: AclPermission::Deny,
        }];
        let policy = Policy::new(&no_controls, AccessPolicy::Car2home);
        assert!(!policy.allows_publish(&APP, "webos/smarthome/info", b"009060210"));
    }

    #[test]
    fn a_shared_subscription_is_checked_by_its_filter() {
        let policy = car2home();
        assert!(policy.allows(&APP, Access::Subscribe, "$share/phones/smarthomed/#"));
        assert!(!policy.allows(&APP, Access::Subscribe, "$share/phones/#"));
        assert!(!policy.allows(&APP, Access::Subscribe, "$share//smarthomed/#"));
        assert_eq!(shared_filter("$share/g/a/b"), Some("a/b"));
        assert_eq!(shared_filter("$share/g"), None);
        assert_eq!(shared_filter("$SYS/broker/uptime"), None);
    }

    #[test]
    fn nobody_publishes_on_the_brokers_own_topics() {
        let rules = [AclRule {
            who: "*".into(),
            client_id: None,
            topic: "#".into(),
            access: AclAccess::ReadWrite,
            permission: AclPermission::Allow,
        }];
        for policy in [Policy::new(&rules, AccessPolicy::Open), Policy::new(&[], AccessPolicy::Open)] {
            assert!(!policy.allows(&APP, Access::Publish, "$SYS/broker/uptime"));
            assert!(policy.allows(&APP, Access::Subscribe, "$SYS/#"));
        }
    }

    #[test]
    fn car2home_devices_use_only_their_own_topics() {
        let policy = car2home();
        let home_assistant = Identity { user: Some("homeassistant"), client_id: "ha" };
        assert!(policy.allows(&home_assistant, Access::Publish, "smarthomed/ha/light/set"));
        assert!(policy.allows(&home_assistant, Access::Publish, "homeassistant/status"));
        assert!(policy.allows(&home_assistant, Access::Subscribe, "homeassistant/#"));
        assert!(!policy.allows(&home_assistant, Access::Publish, "homeassistant/light/x/config"));
        assert!(policy.allows(&ESP32, Access::Subscribe, "webos/smarthome/#"));
        assert!(policy.allows(&ESP32, Access::Publish, "data/smarthome"));
        assert!(!policy.allows(&APP, Access::Publish, "data/smarthome"));
        assert!(policy.allows(&ROBOT, Access::Publish, "smarthomed/robot/v1/vac1/state"));
        assert!(!policy.allows(&ROBOT, Access::Publish, "smarthomed/robot/v1/vac2/state"));
        assert!(!policy.allows(&ROBOT, Access::Publish, "smarthomed/robot/v1/vac1/cmd"));
        assert!(!policy.allows(&ROBOT, Access::Publish, "smarthomed/robot/v1/vac1/estop"));
        assert!(policy.allows(&APP, Access::Publish, "smarthomed/robot/v1/vac1/estop/request"));
        assert!(policy.allows(&APP, Access::Publish, "smarthomed/robot/v1/all/estop/request"));
        assert!(!policy.allows(&APP, Access::Publish, "smarthomed/robot/v1/vac1/state"));
    }

    #[test]
    fn configured_rules_come_first_and_fill_in_user_and_client() {
        let rules = [
            AclRule {
                who: "$accounts".into(),
                client_id: None,
                topic: "home/%u/%c/#".into(),
                access: AclAccess::ReadWrite,
                permission: AclPermission::Allow,
            },
            AclRule {
                who: "*".into(),
                client_id: None,
                topic: "webos/server/#".into(),
                access: AclAccess::Write,
                permission: AclPermission::Deny,
            },
        ];
        let policy = Policy::new(&rules, AccessPolicy::Car2home);
        assert!(policy.allows(&APP, Access::Publish, "home/android/phone-1/x"));
        assert!(!policy.allows(&APP, Access::Publish, "home/car/phone-1/x"));
        assert!(!policy.allows(&APP, Access::Publish, "webos/server/info"));
        let open = Policy::new(&rules, AccessPolicy::Open);
        assert!(open.allows(&APP, Access::Subscribe, "#"));
        assert!(!open.allows(&APP, Access::Publish, "webos/server/info"));
    }

    #[test]
    fn a_name_with_wildcards_or_levels_matches_no_placeholder_rule() {
        let rules = [AclRule {
            who: "*".into(),
            client_id: None,
            topic: "home/%c/#".into(),
            access: AclAccess::ReadWrite,
            permission: AclPermission::Allow,
        }];
        let policy = Policy::new(&rules, AccessPolicy::Car2home);
        for sneaky in ["#", "+", "a/b"] {
            let who = Identity { user: None, client_id: sneaky };
            assert!(!policy.allows(&who, Access::Subscribe, "home/#"), "{sneaky}");
        }
    }
}
