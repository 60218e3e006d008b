//! The JSON tree operations of the Realtime Database, as plain functions over a
//! `serde_json::Value`: what a path means, what set, update and delete do to the tree.
//! Backends that keep the tree as JSON share them.

use serde_json::{Map, Value};

use super::StoreError;
use crate::protocol::names::NameError;

/// A validated path: its segments, without empty ones. The root is `[]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreePath(Vec<String>);

impl TreePath {
    /// Parses "a/b/c" (leading and trailing slashes allowed). Segments must not hold
    /// the characters the Realtime Database forbids in keys: . $ # [ ] and controls.
    pub fn parse(path: &str) -> Result<Self, StoreError> {
        let segments: Vec<String> = path.split('/').filter(|segment| !segment.is_empty()).map(str::to_owned).collect();
        for segment in &segments {
            if segment.chars().any(|c| matches!(c, '.' | '$' | '#' | '[' | ']') || c.is_control()) {
                return Err(StoreError::InvalidName(NameError {
                    what: "tree path",
                    value: path.chars().take(200).collect(),
                    reason: "segments must not contain . $ # [ ] or control characters",
                }));
            }
            if segment.len() > 768 {
                return Err(StoreError::InvalidName(NameError {
                    what: "tree path",
                    value: path.chars().take(200).collect(),
                    reason: "segments must be at most 768 bytes",
                }));
            }
        }
        Ok(Self(segments))
    }

    pub fn segments(&self) -> &[String] {
        &self.0
    }

    /// Whether a change at `other` can change what is at `self`: one is a prefix of
    /// the other.
    pub fn overlaps(&self, other: &TreePath) -> bool {
        self.0.iter().zip(&other.0).all(|(a, b)| a == b)
    }

    pub fn join(&self, child: &str) -> Result<TreePath, StoreError> {
        let mut joined = TreePath::parse(child)?;
        let mut segments = self.0.clone();
        segments.append(&mut joined.0);
        Ok(TreePath(segments))
    }
}

impl std::fmt::Display for TreePath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "/{}", self.0.join("/"))
    }
}

/// The value at `path`, if any.
pub fn get<'a>(root: &'a Value, path: &TreePath) -> Option<&'a Value> {
    let mut node = root;
    for segment in path.segments() {
        node = node.as_object()?.get(segment)?;
    }
    (!node.is_null()).then_some(node)
}

/// Puts `value` at `path`, replacing what was there and turning leaves on the way
/// into objects; null deletes. Empty objects are pruned, as the database keeps none.
pub fn set(root: &mut Value, path: &TreePath, value: Value) {
    let value = prune(value);
    let Some((last, parents)) = path.segments().split_last() else {
        *root = value.unwrap_or(Value::Null);
        return;
    };
    if value.is_none() && get(root, path).is_none() {
        return;
    }
    let mut node = &mut *root;
    for segment in parents {
        node = object(node).entry(segment.clone()).or_insert_with(|| Value::Object(Map::new()));
    }
    match value {
        Some(value) => {
            object(node).insert(last.clone(), value);
        }
        None => {
            object(node).remove(last);
        }
    }
    if let Some(cleaned) = prune(std::mem::take(root)) {
        *root = cleaned;
    }
}

fn object(node: &mut Value) -> &mut Map<String, Value> {
    if !node.is_object() {
        *node = Value::Object(Map::new());
    }
    match node {
        Value::Object(map) => map,
        _ => unreachable!("made an object just above"),
    }
}

/// Drops nulls and empty objects, bottom up; `None` when nothing is left.
fn prune(value: Value) -> Option<Value> {
    match value {
        Value::Null => None,
        Value::Object(map) => {
            let kept: Map<String, Value> =
                map.into_iter().filter_map(|(key, child)| prune(child).map(|child| (key, child))).collect();
            (!kept.is_empty()).then_some(Value::Object(kept))
        }
        other => Some(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn path(text: &str) -> TreePath {
        TreePath::parse(text).unwrap()
    }

    #[test]
    fn paths_parse_and_overlap() {
        assert_eq!(path("/smarthome/status/").segments(), ["smarthome", "status"]);
        assert_eq!(path("").segments(), [] as [String; 0]);
        assert!(path("sensor").overlaps(&path("sensor/hometemp")));
        assert!(path("sensor/hometemp/temp").overlaps(&path("sensor")));
        assert!(!path("sensor/hometemp").overlaps(&path("sensor/openweather")));
        for bad in ["a.b", "a/$x", "x#", "[0]", "a\nb"] {
            assert!(TreePath::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn set_creates_replaces_and_deletes() {
        let mut root = Value::Null;
        set(&mut root, &path("smarthome/status"), json!("009060210"));
        set(&mut root, &path("sensor/hometemp"), json!({"temp": 29.2, "humi": 60, "rain": 1}));
        assert_eq!(get(&root, &path("smarthome/status")), Some(&json!("009060210")));
        assert_eq!(get(&root, &path("sensor/hometemp/rain")), Some(&json!(1)));

        set(&mut root, &path("smarthome/status/deeper"), json!(1));
        assert_eq!(get(&root, &path("smarthome")), Some(&json!({"status": {"deeper": 1}})));

        set(&mut root, &path("smarthome/status/deeper"), Value::Null);
        assert_eq!(get(&root, &path("smarthome")), None, "empty parents are pruned");
        assert_eq!(root, json!({"sensor": {"hometemp": {"temp": 29.2, "humi": 60, "rain": 1}}}));

        set(&mut root, &path("nothing/here"), Value::Null);
        assert_eq!(get(&root, &path("nothing")), None);
        set(&mut root, &path(""), Value::Null);
        assert_eq!(root, Value::Null);
    }

    #[test]
    fn nulls_and_empty_objects_inside_a_value_are_not_stored() {
        let mut root = Value::Null;
        set(&mut root, &path("a"), json!({"b": null, "c": {}, "d": 1}));
        assert_eq!(root, json!({"a": {"d": 1}}));
    }
}
