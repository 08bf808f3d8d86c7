//! Topic names: `[<namespace>/]power-supply/<runner>/...`.

/// The fixed level that follows the namespace.
pub const ROOT: &str = "power-supply";

/// The attributes a client can command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attribute {
    State,
    Voltage,
    Current,
}

impl Attribute {
    pub const ALL: [Attribute; 3] = [Attribute::State, Attribute::Voltage, Attribute::Current];

    /// The topic level and the JSON field name of the attribute.
    pub fn name(self) -> &'static str {
        match self {
            Attribute::State => "state",
            Attribute::Voltage => "voltage",
            Attribute::Current => "current",
        }
    }
}

/// Every topic of one runner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    prefix: String,
}

impl Topics {
    /// Topics of `runner`, under `namespace` when one is set.
    pub fn new(namespace: Option<&str>, runner: &str) -> Self {
        Topics {
            prefix: format!("{}{ROOT}/{runner}", namespace_prefix(namespace)),
        }
    }

    /// `[<namespace>/]power-supply/<runner>`.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn status(&self) -> String {
        format!("{}/status", self.prefix)
    }

    pub fn error(&self) -> String {
        format!("{}/error", self.prefix)
    }

    /// Where the value of `attribute` is published (retained).
    pub fn attribute(&self, attribute: Attribute) -> String {
        format!("{}/{}", self.prefix, attribute.name())
    }

    /// Where commands for `attribute` arrive.
    pub fn command(&self, attribute: Attribute) -> String {
        format!("{}/{}/cmd", self.prefix, attribute.name())
    }

    /// Measured voltage (`Attribute::Voltage`) or current (`Attribute::Current`).
    pub fn measure(&self, attribute: Attribute) -> String {
        format!("{}/measure/{}", self.prefix, attribute.name())
    }

    pub fn restart_command(&self) -> String {
        format!("{}/restart/cmd", self.prefix)
    }

    /// `P/measure/cmd`: measure now.
    pub fn measure_command(&self) -> String {
        format!("{}/measure/cmd", self.prefix)
    }

    /// `P/measure`: the one reply to `P/measure/cmd`, both values.
    pub fn measure_reply(&self) -> String {
        format!("{}/measure", self.prefix)
    }

    /// `P/info` (retained): model, description, limits and decimals.
    pub fn info(&self) -> String {
        format!("{}/info", self.prefix)
    }

    /// Whether `topic` is a command the runner itself answers (an
    /// attribute's, or `measure/cmd`; `restart/cmd` is the supervisor's).
    pub fn is_runner_command(&self, topic: &str) -> bool {
        self.command_attribute(topic).is_some() || topic == self.measure_command()
    }

    /// `P/owner`: which server instance serves this runner (retained).
    pub fn owner(&self) -> String {
        format!("{}/owner", self.prefix)
    }

    /// The attribute whose command topic `topic` is, if it is one of this runner's.
    pub fn command_attribute(&self, topic: &str) -> Option<Attribute> {
        let rest = topic.strip_prefix(&self.prefix)?.strip_prefix('/')?;
        let name = rest.strip_suffix("/cmd")?;
        Attribute::ALL.into_iter().find(|a| a.name() == name)
    }
}

/// What goes before every topic of a server in `namespace`: `"<ns>/"`, or
/// nothing when there is no namespace (or an empty one). The one place the
/// namespace is joined to a topic, for the server, its clients and the
/// ownership records alike.
pub fn namespace_prefix(namespace: Option<&str>) -> String {
    match namespace {
        Some(ns) if !ns.is_empty() => format!("{ns}/"),
        _ => String::new(),
    }
}

/// The filter matching every command topic (`P/<leaf>/cmd`) of every
/// runner under `namespace`: one filter for a whole server, whatever its
/// number of runners.
pub fn commands_filter(namespace: Option<&str>) -> String {
    format!("{}{ROOT}/+/+/cmd", namespace_prefix(namespace))
}

/// The runner and the leaf (`voltage`, `restart`, …) of a command topic
/// `P/<leaf>/cmd` under `namespace`.
pub fn command_target<'a>(namespace: Option<&str>, topic: &'a str) -> Option<(&'a str, &'a str)> {
    let rest = topic
        .strip_prefix(namespace_prefix(namespace).as_str())?
        .strip_prefix(ROOT)?
        .strip_prefix('/')?
        .strip_suffix("/cmd")?;
    let (runner, leaf) = rest.split_once('/')?;
    (!runner.is_empty() && !leaf.is_empty() && !leaf.contains('/')).then_some((runner, leaf))
}

/// The runner named by a restart command topic, under `namespace`.
pub fn restart_command_runner<'a>(namespace: Option<&str>, topic: &'a str) -> Option<&'a str> {
    let root = format!("{}{ROOT}/", namespace_prefix(namespace));
    let runner = topic.strip_prefix(&root)?.strip_suffix("/restart/cmd")?;
    (!runner.is_empty() && !runner.contains('/')).then_some(runner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_targets() {
        assert_eq!(commands_filter(None), "power-supply/+/+/cmd");
        assert_eq!(commands_filter(Some("lab")), "lab/power-supply/+/+/cmd");
        let t = Topics::new(Some("lab"), "psu1");
        for attribute in Attribute::ALL {
            assert_eq!(
                command_target(Some("lab"), &t.command(attribute)),
                Some(("psu1", attribute.name()))
            );
        }
        assert_eq!(
            command_target(Some("lab"), &t.restart_command()),
            Some(("psu1", "restart"))
        );
        assert_eq!(
            command_target(Some("lab"), &t.measure_command()),
            Some(("psu1", "measure"))
        );
        for other in [
            "power-supply/psu1/voltage/cmd",
            "lab/power-supply/psu1/voltage",
            "lab/power-supply/psu1/cmd",
            "lab/power-supply//voltage/cmd",
            "lab/power-supply/psu1/a/b/cmd",
            "lab/power-supplyX/psu1/voltage/cmd",
        ] {
            assert_eq!(command_target(Some("lab"), other), None, "{other}");
        }
        assert_eq!(
            command_target(None, "power-supply/p/state/cmd"),
            Some(("p", "state"))
        );
    }

    #[test]
    fn topics_without_namespace() {
        let t = Topics::new(None, "psu1");
        assert_eq!(t.status(), "power-supply/psu1/status");
        assert_eq!(
            t.command(Attribute::Voltage),
            "power-supply/psu1/voltage/cmd"
        );
        assert_eq!(t.attribute(Attribute::State), "power-supply/psu1/state");
        assert_eq!(
            t.measure(Attribute::Current),
            "power-supply/psu1/measure/current"
        );
        assert_eq!(t.restart_command(), "power-supply/psu1/restart/cmd");
        assert_eq!(t.measure_command(), "power-supply/psu1/measure/cmd");
        assert_eq!(t.measure_reply(), "power-supply/psu1/measure");
        assert_eq!(t.info(), "power-supply/psu1/info");
    }

    #[test]
    fn topics_with_namespace() {
        let t = Topics::new(Some("bench-3"), "psu1");
        assert_eq!(t.error(), "bench-3/power-supply/psu1/error");
        assert_eq!(
            commands_filter(Some("bench-3")),
            "bench-3/power-supply/+/+/cmd"
        );
    }

    #[test]
    fn command_topics_are_recognised() {
        let t = Topics::new(None, "psu1");
        assert_eq!(
            t.command_attribute("power-supply/psu1/current/cmd"),
            Some(Attribute::Current)
        );
        assert_eq!(t.command_attribute("power-supply/psu1/current"), None);
        assert_eq!(t.command_attribute("power-supply/psu10/current/cmd"), None);
        assert_eq!(t.command_attribute("power-supply/psu1/power/cmd"), None);
        assert!(t.is_runner_command("power-supply/psu1/voltage/cmd"));
        assert!(t.is_runner_command("power-supply/psu1/measure/cmd"));
        assert!(!t.is_runner_command("power-supply/psu1/restart/cmd"));
        assert!(!t.is_runner_command("power-supply/psu1/measure"));
    }

    #[test]
    fn restart_topics_name_their_runner() {
        assert_eq!(
            restart_command_runner(None, "power-supply/a-1/restart/cmd"),
            Some("a-1")
        );
        assert_eq!(
            restart_command_runner(Some("ns"), "power-supply/a/restart/cmd"),
            None
        );
        assert_eq!(
            restart_command_runner(Some("ns"), "ns/power-supply/a/restart/cmd"),
            Some("a")
        );
    }
}
