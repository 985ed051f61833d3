//! Walks of the configuration tree section by section, each one a [`Sections`] visitor
//! run through [`AppConfig::from_sections`]: parsing a figment so that every problem is
//! named, not only the first; the tree's top-level keys, so that an unknown one is
//! refused; the OpenAPI schema of the tree, as `/actuator/configprops` answers it.

use super::AppConfig;
use bitark_engine::config::Sections;
use figment::error::Kind;
use figment::value::Value;
use figment::Figment;
use serde::de::DeserializeOwned;
use std::sync::OnceLock;
use utoipa::openapi::schema::{AdditionalProperties, ObjectBuilder, OneOfBuilder, Ref, Schema};
use utoipa::openapi::RefOr;
use utoipa::ToSchema;

/// The configuration in `figment`, or every problem with it: the top-level keys that no
/// section takes, the values of the wrong type or form section by section, then the
/// invalid values of the sections that did parse. Each names its key, and the source it
/// came from when the problem is in a source.
pub(super) fn parse(figment: &Figment) -> Result<AppConfig, Vec<String>> {
    // A source that is no tree of keys (a YAML syntax error, say) stops here.
    let tree = figment.find_value("").map_err(error_lines)?;
    let mut parse = Parse { figment, lines: unknown_keys(figment, &tree), failed: Vec::new() };
    let config = AppConfig::from_sections(&mut parse);
    let Parse { mut lines, failed, .. } = parse;
    if lines.is_empty() {
        return Ok(config);
    }
    // A section that did not parse holds its defaults: checking them would say nothing.
    let in_failed = |problem: &String| failed.iter().any(|name| problem.starts_with(&format!("{name}.")));
    lines.extend(config.problems().into_iter().filter(|p| !in_failed(p)));
    Err(lines)
}

/// Parses each section from a figment on its own: serde stops at a tree's first error, so
/// parsing the whole tree at once would name only one.
struct Parse<'a> {
    figment: &'a Figment,
    /// One line per problem found so far, each naming its key and source.
    lines: Vec<String>,
    /// The sections that did not parse.
    failed: Vec<&'static str>,
}

impl Sections for Parse<'_> {
    fn section<T: DeserializeOwned + Default + ToSchema>(&mut self, name: &'static str) -> T {
        if !self.figment.contains(name) {
            return T::default();
        }
        self.figment.extract_inner(name).unwrap_or_else(|errors: figment::Error| {
            // figment names a section's keys from the inside out, the section last.
            self.lines.extend(errors.into_iter().map(|mut e| {
                if e.path.last().is_some_and(|last| last == name) {
                    e.path.pop();
                }
                e.path.insert(0, name.to_string());
                error_line(&e)
            }));
            self.failed.push(name);
            T::default()
        })
    }
}

/// One line per top-level key of `tree` that no section takes, naming the source it came
/// from, as serde's `deny_unknown_fields` words it.
fn unknown_keys(figment: &Figment, tree: &Value) -> Vec<String> {
    let known = top_level_keys();
    let Some(tree) = tree.as_dict() else { return Vec::new() };
    tree.keys()
        .filter(|key| !known.contains(&key.as_str()))
        .map(|key| {
            let mut e = figment::Error::from(Kind::UnknownField(key.clone(), known));
            e.path = vec![key.clone()];
            e.metadata = figment.find_metadata(key).cloned();
            error_line(&e)
        })
        .collect()
}

/// Every top-level key of the tree, in the order of [`AppConfig::from_sections`].
fn top_level_keys() -> &'static [&'static str] {
    static KEYS: OnceLock<Vec<&'static str>> = OnceLock::new();
    KEYS.get_or_init(|| {
        let mut keys = Keys(Vec::new());
        AppConfig::from_sections(&mut keys);
        keys.0
    })
}

/// Notes each section's key, answering its defaults.
struct Keys(Vec<&'static str>);

impl Sections for Keys {
    fn section<T: DeserializeOwned + Default + ToSchema>(&mut self, name: &'static str) -> T {
        self.0.push(name);
        T::default()
    }
}

/// One line per error, each naming the key and the source it came from.
fn error_lines(errors: figment::Error) -> Vec<String> {
    errors.into_iter().map(|e| error_line(&e)).collect()
}

/// One error as a line naming its key and the source it came from.
fn error_line(e: &figment::Error) -> String {
    let key = if e.path.is_empty() { "(top level)".to_string() } else { e.path.join(".") };
    let source = match e.metadata.as_ref() {
        Some(meta) => match &meta.source {
            Some(source) => format!("{source}"),
            None => meta.name.to_string(),
        },
        None => "configuration".to_string(),
    };
    format!("{key}: {} (from {source})", e.kind)
}

/// The tree as `/actuator/configprops` answers it: an object with every section under its
/// key and no other key.
impl utoipa::PartialSchema for AppConfig {
    fn schema() -> RefOr<Schema> {
        let mut described = Described::default();
        AppConfig::from_sections(&mut described);
        let tree = described
            .properties
            .into_iter()
            .fold(ObjectBuilder::new(), |tree, (name, schema)| tree.property(name, schema));
        tree.description(Some("The whole configuration tree."))
            .additional_properties(Some(AdditionalProperties::FreeForm(false)))
            .into()
    }
}

impl ToSchema for AppConfig {
    fn schemas(schemas: &mut Vec<(String, RefOr<Schema>)>) {
        let mut described = Described::default();
        AppConfig::from_sections(&mut described);
        schemas.extend(described.schemas);
    }
}

/// Describes each section: a reference to its schema under its key, and that schema with
/// the ones it refers to.
#[derive(Default)]
struct Described {
    properties: Vec<(&'static str, RefOr<Schema>)>,
    schemas: Vec<(String, RefOr<Schema>)>,
}

impl Sections for Described {
    fn section<T: DeserializeOwned + Default + ToSchema>(&mut self, name: &'static str) -> T {
        // The reference inside a `oneOf`, as utoipa's derive writes a field with a default.
        self.properties.push((name, OneOfBuilder::new().item(Ref::from_schema_name(T::name())).into()));
        self.schemas.push((T::name().into_owned(), T::schema()));
        T::schemas(&mut self.schemas);
        T::default()
    }
}
