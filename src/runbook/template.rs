//! Templates in parameter values and `when` expressions (minijinja), compiled once when a
//! runbook is validated and rendered by the executor for each call.
//!
//! The injection guarantee lives here: a template only ever produces a *value* that takes
//! the place of one TOML string in the parameter tree. Rendering walks the tree the file
//! declared and builds [`ParamValue`]s directly; no text is ever parsed as JSON, TOML or a
//! command line afterwards, and minijinja's output is never rendered a second time. So a
//! mailbox property holding `", "Identity": "admin"` or `{{ 7 * 7 }}` arrives at Exchange as
//! exactly that string.
//!
//! Undefined values are strict: printing, comparing, iterating or testing the truth of a
//! missing property is an error that the executor records for the item, never a silent
//! empty string. `item.X is defined` and `item.X | default(…)` still work.
//!
//! Every render has a work budget, because a runbook's template must not be able to hang
//! the worker: each render may run [`TEMPLATE_FUEL`] template instructions (minijinja's
//! fuel; a nested `range` loop runs out in milliseconds) and produce at most
//! [`MAX_RENDERED_BYTES`] per parameter value. Going over either is a [`TemplateError`]
//! for that call, like any other rendering failure. Rendering is still synchronous CPU
//! work: the executor runs it off the async runtime's worker threads.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use chrono::{DateTime, SecondsFormat, Utc};
use minijinja::value::ValueKind;
use minijinja::{AutoEscape, Environment, UndefinedBehavior, Value};
use serde::Serialize;

use crate::exchange::params::ParamValue;

/// The variable a whole-value expression is stored in, so evaluating it keeps its native
/// type. Expressions cannot contain statements, so no runbook can clash with it.
const VALUE_VAR: &str = "__runbook_value";
const EXPRESSION_PREFIX: &str = "{% set __runbook_value = (";
const EXPRESSION_SUFFIX: &str = ") %}";

/// The variables a template may use (minijinja's own global functions included).
pub const TEMPLATE_VARIABLES: &[&str] =
    &["item", "steps", "params", "job", "now", "vars", "secrets"];
pub(crate) const BUILTIN_GLOBALS: &[&str] = &["range", "dict", "namespace", "debug", "keys"];
/// The context variable holding the key sets `keys()` reads; not a name a runbook can use
/// (validation refuses unknown variables).
const KEYS_VAR: &str = "__runbook_keys";
/// The most keys one `keys("step", "field")` set holds: enough for a large tenant's users,
/// small enough (a few MB) to hold while both sides stream.
pub const MAX_KEYS: usize = 250_000;
/// Attributes of `job`.
pub const JOB_ATTRIBUTES: &[&str] = &["id", "runbook", "scheduled_for"];
/// Attributes of `steps.<name>`.
pub const STEP_ATTRIBUTES: &[&str] = &["count", "records"];

/// Template instructions one render may run (a parameter value or a `when`). Loops over a
/// step's kept records cost a few instructions per record; filters such as `map` or
/// `join` cost one instruction whatever the list's length.
pub const TEMPLATE_FUEL: u64 = 1_000_000;
/// The most bytes one rendered parameter value may have (all its strings together).
pub const MAX_RENDERED_BYTES: usize = 4 * 1024 * 1024;

/// A value or `when` that could not be rendered for one call. The executor records it
/// for the item (or the step) and goes on as `continue_on_error` says.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    /// The template read something that does not exist: a property the record lacks, a
    /// step that kept no records.
    #[error(
        "{location}: undefined value in `{template}` (test optional properties with \"is defined\" or give a \"| default(…)\")"
    )]
    Undefined {
        location: String,
        template: String,
        #[source]
        source: Option<minijinja::Error>,
    },
    /// Any other failure while rendering (a filter applied to the wrong type, …).
    #[error("{location}: cannot render `{template}`: {detail}")]
    Render {
        location: String,
        template: String,
        detail: String,
        #[source]
        source: minijinja::Error,
    },
    /// The template ran more than [`TEMPLATE_FUEL`] instructions.
    #[error(
        "{location}: `{template}` exceeded its work budget of {TEMPLATE_FUEL} template instructions and was stopped: make it do less (loop over fewer records, narrow the earlier step's filter)"
    )]
    Budget { location: String, template: String },
    /// The template produced more than [`MAX_RENDERED_BYTES`].
    #[error(
        "{location}: `{template}` produced more than its budget of {MAX_RENDERED_BYTES} bytes and was stopped: make the value smaller"
    )]
    TooLarge { location: String, template: String },
    /// A whole-value expression produced something that is not a parameter value (a
    /// function, bytes, a map with non-string keys, a non-finite number).
    #[error("{location}: `{template}` produced {what}, which cannot be a parameter value")]
    NotAValue {
        location: String,
        template: String,
        what: String,
    },
}

/// What a job knows about itself, for `job.*` in templates.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct JobInfo {
    pub id: String,
    pub runbook: String,
    /// The occurrence's instant (for a manual run: when it was requested).
    #[serde(serialize_with = "rfc3339")]
    pub scheduled_for: DateTime<Utc>,
}

fn rfc3339<S: serde::Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&t.to_rfc3339_opts(SecondsFormat::Secs, true))
}

/// The values templates see, built by the executor: once per job with
/// [`TemplateContext::new`], extended with [`TemplateContext::with_step`] as steps finish,
/// and specialised per record with [`TemplateContext::with_item`] (cheap: the shared parts
/// are reference-counted, not copied).
#[derive(Clone, Debug)]
pub struct TemplateContext {
    item: Option<Value>,
    /// `keys("step", "field")` sets by [`key_name`].
    keys: BTreeMap<String, Value>,
    steps: BTreeMap<String, Value>,
    steps_value: Value,
    params: Value,
    job: Value,
    now: Value,
    /// The settings' `[vars]` and the job's secrets (undefined until
    /// [`TemplateContext::with_assets`]).
    vars: Value,
    secrets: Value,
    /// The map templates are rendered against, rebuilt whenever a part changes so that a
    /// call renders all its parameters against one map.
    root: Value,
}

impl TemplateContext {
    /// `params` are the run's resolved parameters (see [`super::Runbook::resolve_params`]);
    /// `now` is the job's start, rendered as an RFC 3339 UTC string and the same for every
    /// call of the job so that its values are consistent.
    pub fn new(
        job: &JobInfo,
        params: &BTreeMap<String, serde_json::Value>,
        now: DateTime<Utc>,
    ) -> Self {
        let mut ctx = Self {
            item: None,
            keys: BTreeMap::new(),
            steps: BTreeMap::new(),
            steps_value: Value::from(BTreeMap::<String, Value>::new()),
            params: Value::from_serialize(params),
            job: Value::from_serialize(job),
            now: Value::from(now.to_rfc3339_opts(SecondsFormat::Secs, true)),
            vars: Value::from(BTreeMap::<String, Value>::new()),
            secrets: Value::from(BTreeMap::<String, Value>::new()),
            root: Value::UNDEFINED,
        };
        ctx.rebuild();
        ctx
    }

    /// Records a finished step: `steps.<name>.count`, and `steps.<name>.records` when the
    /// executor kept them (it must for the steps in
    /// [`super::Runbook::steps_needing_records`]).
    pub fn with_step(
        mut self,
        name: &str,
        count: u64,
        records: Option<&[serde_json::Value]>,
    ) -> Self {
        let mut view = BTreeMap::new();
        view.insert("count".to_string(), Value::from(count));
        if let Some(records) = records {
            view.insert("records".to_string(), Value::from_serialize(records));
        }
        self.steps.insert(name.to_string(), Value::from(view));
        self.steps_value = Value::from(self.steps.clone());
        self.rebuild();
        self
    }

    /// Adds the shared variables (`vars.<name>`) and the job's secret values
    /// (`secrets.<name>`). A name that is not there is undefined, which rendering reports
    /// as an error naming the template.
    pub fn with_assets(
        mut self,
        vars: &BTreeMap<String, serde_json::Value>,
        secrets: &BTreeMap<String, String>,
    ) -> Self {
        self.vars = Value::from_serialize(vars);
        self.secrets = Value::from_serialize(secrets);
        self.rebuild();
        self
    }

    /// Records the lower-cased values of `field` in the records of step `step`, for
    /// `keys("step", "field")`. Only the set is held, never the records.
    pub fn with_keys(mut self, step: &str, field: &str, keys: HashSet<String>) -> Self {
        self.keys
            .insert(key_name(step, field), Value::from_object(KeySet(keys)));
        self.rebuild();
        self
    }

    /// The context for one record of a `for_each` step: `item` is that record.
    pub fn with_item(&self, item: &serde_json::Value) -> Self {
        let mut ctx = self.clone();
        ctx.item = Some(Value::from_serialize(item));
        ctx.rebuild();
        ctx
    }

    fn rebuild(&mut self) {
        let mut root = BTreeMap::new();
        if let Some(item) = &self.item {
            root.insert("item", item.clone());
        }
        root.insert("steps", self.steps_value.clone());
        root.insert("params", self.params.clone());
        root.insert("job", self.job.clone());
        root.insert("now", self.now.clone());
        root.insert("vars", self.vars.clone());
        root.insert("secrets", self.secrets.clone());
        if !self.keys.is_empty() {
            root.insert(KEYS_VAR, Value::from(self.keys.clone()));
        }
        self.root = Value::from(root);
    }

    fn root(&self) -> Value {
        self.root.clone()
    }
}

/// The compiled templates of one runbook, shared by its steps.
#[derive(Debug)]
pub(crate) struct TemplateSet {
    env: Environment<'static>,
}

/// One compiled template inside a [`TemplateSet`].
#[derive(Clone, Debug)]
pub(crate) struct TemplateRef {
    /// Its name in the environment (unique per runbook).
    name: String,
    /// The text as the runbook wrote it, for messages.
    source: String,
}

/// A parameter value as declared in the file, with its templates compiled.
#[derive(Clone, Debug)]
pub(crate) enum ValueTemplate {
    /// No template anywhere inside.
    Literal(ParamValue),
    /// A string with text around or between templates: renders to a string.
    Text(TemplateRef),
    /// A string that is exactly one `{{ expression }}` (or a `when`): keeps the
    /// expression's native type.
    Expression(TemplateRef),
    Array(Vec<ValueTemplate>),
    Table(BTreeMap<String, ValueTemplate>),
}

/// A template that does not compile.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct CompileError {
    pub detail: String,
    /// Byte offset of the problem inside the template's own text, when minijinja says.
    pub offset: Option<usize>,
}

/// Builds a [`TemplateSet`] while a runbook is validated.
pub(crate) struct TemplateCompiler {
    env: Environment<'static>,
    /// Templates compiled so far; numbers their names so that two keys that print the
    /// same (`{ "a.b" = … }` and `{ a = { b = … } }`) never replace each other.
    count: usize,
}

/// Whether a string holds template syntax at all; strings without it are literal.
pub(crate) fn has_template_syntax(s: &str) -> bool {
    s.contains("{{") || s.contains("{%") || s.contains("{#")
}

fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    // Values go to Exchange, not to a browser: HTML escaping would corrupt them.
    env.set_auto_escape_callback(|_| AutoEscape::None);
    env.set_fuel(Some(TEMPLATE_FUEL));
    env.add_filter("opath", opath);
    env.add_function("keys", keys);
    env
}

fn key_name(step: &str, field: &str) -> String {
    format!("{step}\u{0}{field}")
}

/// The lower-cased values of one field of one step's records: `x in keys(…)` looks a value
/// up in O(1); the set cannot be printed or iterated (it may be large).
#[derive(Debug)]
struct KeySet(HashSet<String>);

impl minijinja::value::Object for KeySet {
    fn repr(self: &Arc<Self>) -> minijinja::value::ObjectRepr {
        minijinja::value::ObjectRepr::Map
    }

    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        key.as_str()
            .filter(|k| self.0.contains(*k))
            .map(|_| Value::from(true))
    }

    fn enumerate(self: &Arc<Self>) -> minijinja::value::Enumerator {
        minijinja::value::Enumerator::NonEnumerable
    }
}

/// `keys("step", "field")`: the set the executor collected from that step's records.
fn keys(state: &minijinja::State, step: &str, field: &str) -> Result<Value, minijinja::Error> {
    state
        .lookup(KEYS_VAR)
        .and_then(|sets| sets.get_item(&Value::from(key_name(step, field))).ok())
        .filter(|v| !v.is_undefined())
        .ok_or_else(|| {
            minijinja::Error::new(
                minijinja::ErrorKind::UndefinedError,
                format!("keys(\"{step}\", \"{field}\"): no keys were collected from that step"),
            )
        })
}

/// Collects a template's output and refuses to grow past [`MAX_RENDERED_BYTES`].
#[derive(Default)]
struct CappedOutput {
    bytes: Vec<u8>,
    overflowed: bool,
}

impl std::io::Write for CappedOutput {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.bytes.len().saturating_add(buf.len()) > MAX_RENDERED_BYTES {
            self.overflowed = true;
            return Err(std::io::Error::other("the rendered value is too large"));
        }
        self.bytes.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The bytes of a parameter value's strings, to hold it to [`MAX_RENDERED_BYTES`].
fn rendered_size(value: &ParamValue) -> usize {
    match value {
        ParamValue::String(s) => s.len(),
        ParamValue::Array(items) => items.iter().map(rendered_size).sum(),
        ParamValue::HashTable(map) => map.iter().map(|(k, v)| k.len() + rendered_size(v)).sum(),
        _ => 8,
    }
}

/// `{{ params.department | opath }}`: a string as an OPATH filter literal, in single
/// quotes with embedded single quotes doubled, so a value cannot end the literal early and
/// add filter clauses. PowerShell also takes the typographic single quotes (‘ ’ ‚ ‛) for
/// `'`, so they are doubled too.
fn opath(value: String) -> String {
    let mut quoted = String::with_capacity(value.len() + 2);
    quoted.push('\'');
    for c in value.chars() {
        if matches!(c, '\'' | '\u{2018}'..='\u{201B}') {
            quoted.push(c);
        }
        quoted.push(c);
    }
    quoted.push('\'');
    quoted
}

/// Parameters whose value is an OPATH filter, where a value must be quoted with `opath`.
pub const OPATH_PARAMETERS: &[&str] = &["Filter", "RecipientFilter", "ContentFilter"];

/// Whether a parameter takes an OPATH filter (PowerShell names ignore case).
pub(crate) fn is_opath_parameter(name: &str) -> bool {
    OPATH_PARAMETERS
        .iter()
        .any(|p| p.eq_ignore_ascii_case(name))
}

/// In an OPATH filter's template, the byte offset of the first `{{ … }}` whose value is
/// not quoted by `opath`: its last filter must be `opath`, applied to the whole value (no
/// `~`, `+` or other operator outside parentheses before it, which `|` binds tighter
/// than). Conservative: a form it cannot read is refused, with the same fix.
pub(crate) fn unquoted_in_opath(source: &str) -> Option<usize> {
    let mut from = 0;
    while let Some(open) = source[from..].find("{{").map(|o| o + from) {
        let Some(close) = source[open + 2..].find("}}").map(|c| c + open + 2) else {
            return Some(open);
        };
        let inner = source[open + 2..close]
            .trim_start_matches(['-', '+'])
            .trim_end_matches(['-', '+']);
        if !quoted_by_opath(inner) {
            return Some(open);
        }
        from = close + 2;
    }
    None
}

fn quoted_by_opath(expression: &str) -> bool {
    // Split at `|` outside strings and brackets.
    let mut segments = vec![String::new()];
    let mut depth = 0i32;
    let mut quote: Option<char> = None;
    for c in expression.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '\'' | '"') => quote = Some(c),
            (None, '(' | '[' | '{') => depth += 1,
            (None, ')' | ']' | '}') => depth -= 1,
            (None, '|') if depth == 0 => {
                segments.push(String::new());
                continue;
            }
            (None, c) if depth == 0 && "~+-*/%<>=!".contains(c) && segments.len() == 1 => {
                return false;
            }
            _ => {}
        }
        if let Some(last) = segments.last_mut() {
            last.push(c);
        }
    }
    let value_has_keyword = segments[0]
        .split_whitespace()
        .any(|w| matches!(w, "if" | "else" | "and" | "or" | "not" | "in" | "is"));
    segments.len() >= 2
        && !value_has_keyword
        && !segments[0].trim().is_empty()
        && segments.last().is_some_and(|f| f.trim() == "opath")
}

fn compile_error(e: &minijinja::Error, shift: usize) -> CompileError {
    CompileError {
        detail: e
            .detail()
            .map(str::to_string)
            .unwrap_or_else(|| e.kind().to_string()),
        offset: e.range().map(|r| r.start.saturating_sub(shift)),
    }
}

impl TemplateCompiler {
    pub(crate) fn new() -> Self {
        Self {
            env: environment(),
            count: 0,
        }
    }

    /// Compiles a string parameter value named `name` (unique per runbook). Returns the
    /// value and the variables it reads (`item.Alias`, `steps.find.count`, …).
    pub(crate) fn string_value(
        &mut self,
        name: &str,
        source: &str,
    ) -> Result<(ValueTemplate, HashSet<String>), CompileError> {
        if !has_template_syntax(source) {
            return Ok((
                ValueTemplate::Literal(ParamValue::String(source.to_string())),
                HashSet::new(),
            ));
        }
        if let Some(inner) = whole_expression(source)
            && self.check_expression(inner).is_ok()
        {
            return self.wrapped_expression(name, source, inner);
        }
        let name = self.unique(name);
        self.env
            .add_template_owned(name.clone(), source.to_string())
            .map_err(|e| compile_error(&e, 0))?;
        let variables = self.variables(&name);
        Ok((
            ValueTemplate::Text(TemplateRef {
                name,
                source: source.to_string(),
            }),
            variables,
        ))
    }

    /// Compiles a `when` expression (no `{{ }}` around it).
    pub(crate) fn expression(
        &mut self,
        name: &str,
        source: &str,
    ) -> Result<(ValueTemplate, HashSet<String>), CompileError> {
        self.check_expression(source)?;
        self.wrapped_expression(name, source, source)
    }

    /// Compiles an expression only to check its syntax.
    ///
    /// minijinja 2.24's expression lexer panics on a `}}` (it pops its state stack empty),
    /// so such expressions are refused first; the `catch_unwind` is a second line of
    /// defence so that no runbook text can take the process down.
    fn check_expression(&self, source: &str) -> Result<(), CompileError> {
        if let Some(offset) = source.find("}}") {
            return Err(CompileError {
                detail: "unexpected \"}}\" (write a when expression without {{ }})".to_string(),
                offset: Some(offset),
            });
        }
        let env = &self.env;
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            env.compile_expression(source).map(|_| ())
        })) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(compile_error(&e, 0)),
            Err(_) => Err(CompileError {
                detail: "the expression cannot be compiled".to_string(),
                offset: None,
            }),
        }
    }

    fn wrapped_expression(
        &mut self,
        name: &str,
        source: &str,
        expression: &str,
    ) -> Result<(ValueTemplate, HashSet<String>), CompileError> {
        let wrapped = format!("{EXPRESSION_PREFIX}{expression}{EXPRESSION_SUFFIX}");
        let name = self.unique(name);
        self.env
            .add_template_owned(name.clone(), wrapped)
            .map_err(|e| compile_error(&e, EXPRESSION_PREFIX.len()))?;
        let variables = self.variables(&name);
        Ok((
            ValueTemplate::Expression(TemplateRef {
                name,
                source: source.to_string(),
            }),
            variables,
        ))
    }

    fn unique(&mut self, name: &str) -> String {
        self.count += 1;
        format!("{name}#{}", self.count)
    }

    fn variables(&self, name: &str) -> HashSet<String> {
        self.env
            .get_template(name)
            .map(|t| t.undeclared_variables(true))
            .unwrap_or_default()
    }

    pub(crate) fn finish(self) -> Arc<TemplateSet> {
        Arc::new(TemplateSet { env: self.env })
    }
}

/// The inside of a string that is exactly one `{{ … }}`, without whitespace control
/// markers (`{{- x -}}` trims text, which a whole value has none of).
fn whole_expression(s: &str) -> Option<&str> {
    let inner = s.strip_prefix("{{")?.strip_suffix("}}")?;
    let trimmed_markers = inner.starts_with(['-', '+']) || inner.ends_with(['-', '+']);
    (!trimmed_markers && !inner.trim().is_empty()).then_some(inner)
}

impl ValueTemplate {
    /// An array, folded into a literal when nothing inside is a template.
    pub(crate) fn array(items: Vec<ValueTemplate>) -> Self {
        if items.iter().all(ValueTemplate::is_literal) {
            ValueTemplate::Literal(ParamValue::Array(
                items
                    .into_iter()
                    .filter_map(ValueTemplate::into_literal)
                    .collect(),
            ))
        } else {
            ValueTemplate::Array(items)
        }
    }

    /// A table (hashtable), folded into a literal when nothing inside is a template.
    pub(crate) fn table(entries: BTreeMap<String, ValueTemplate>) -> Self {
        if entries.values().all(ValueTemplate::is_literal) {
            ValueTemplate::Literal(ParamValue::HashTable(
                entries
                    .into_iter()
                    .filter_map(|(k, v)| v.into_literal().map(|v| (k, v)))
                    .collect(),
            ))
        } else {
            ValueTemplate::Table(entries)
        }
    }

    pub(crate) fn is_literal(&self) -> bool {
        matches!(self, ValueTemplate::Literal(_))
    }

    fn into_literal(self) -> Option<ParamValue> {
        match self {
            ValueTemplate::Literal(v) => Some(v),
            _ => None,
        }
    }

    pub(crate) fn render(
        &self,
        set: &TemplateSet,
        ctx: &TemplateContext,
        location: &str,
    ) -> Result<ParamValue, TemplateError> {
        match self {
            ValueTemplate::Literal(v) => Ok(v.clone()),
            ValueTemplate::Text(t) => {
                let template = set
                    .env
                    .get_template(&t.name)
                    .map_err(|e| render_error(e, t, location))?;
                let mut output = CappedOutput::default();
                match template.render_captured_to(ctx.root(), &mut output) {
                    Ok(_) => {}
                    Err(_) if output.overflowed => return Err(too_large(t, location)),
                    Err(e) => return Err(render_error(e, t, location)),
                }
                // minijinja writes whole `str`s, so the bytes are UTF-8; a lossy
                // conversion never changes them.
                Ok(ParamValue::String(
                    String::from_utf8(output.bytes)
                        .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()),
                ))
            }
            ValueTemplate::Expression(t) => {
                let value = evaluate(set, t, ctx, location)?;
                let value = to_param_value(&value).map_err(|what| TemplateError::NotAValue {
                    location: location.to_string(),
                    template: t.source.clone(),
                    what,
                })?;
                if rendered_size(&value) > MAX_RENDERED_BYTES {
                    return Err(too_large(t, location));
                }
                Ok(value)
            }
            ValueTemplate::Array(items) => items
                .iter()
                .map(|v| v.render(set, ctx, location))
                .collect::<Result<Vec<_>, _>>()
                .map(ParamValue::Array),
            ValueTemplate::Table(entries) => entries
                .iter()
                .map(|(k, v)| Ok((k.clone(), v.render(set, ctx, location)?)))
                .collect::<Result<BTreeMap<_, _>, _>>()
                .map(ParamValue::HashTable),
        }
    }

    /// Evaluates a `when` expression to its truth (Jinja's rules: empty strings, lists and
    /// 0 are false).
    pub(crate) fn truthy(
        &self,
        set: &TemplateSet,
        ctx: &TemplateContext,
        location: &str,
    ) -> Result<bool, TemplateError> {
        match self {
            ValueTemplate::Expression(t) => Ok(evaluate(set, t, ctx, location)?.is_true()),
            ValueTemplate::Literal(v) => {
                Ok(!matches!(v, ParamValue::Null | ParamValue::Bool(false)))
            }
            other => other
                .render(set, ctx, location)
                .map(|v| !matches!(v, ParamValue::Null | ParamValue::Bool(false))),
        }
    }
}

fn evaluate(
    set: &TemplateSet,
    t: &TemplateRef,
    ctx: &TemplateContext,
    location: &str,
) -> Result<Value, TemplateError> {
    let template = set
        .env
        .get_template(&t.name)
        .map_err(|e| render_error(e, t, location))?;
    let mut output = CappedOutput::default();
    let captured = match template.render_captured_to(ctx.root(), &mut output) {
        Ok(captured) => captured,
        Err(_) if output.overflowed => return Err(too_large(t, location)),
        Err(e) => return Err(render_error(e, t, location)),
    };
    match captured.state().lookup(VALUE_VAR) {
        Some(value) if !value.is_undefined() => Ok(value),
        _ => Err(TemplateError::Undefined {
            location: location.to_string(),
            template: t.source.clone(),
            source: None,
        }),
    }
}

fn too_large(t: &TemplateRef, location: &str) -> TemplateError {
    TemplateError::TooLarge {
        location: location.to_string(),
        template: t.source.clone(),
    }
}

fn render_error(e: minijinja::Error, t: &TemplateRef, location: &str) -> TemplateError {
    if e.kind() == minijinja::ErrorKind::OutOfFuel {
        return TemplateError::Budget {
            location: location.to_string(),
            template: t.source.clone(),
        };
    }
    if e.kind() == minijinja::ErrorKind::UndefinedError {
        return TemplateError::Undefined {
            location: location.to_string(),
            template: t.source.clone(),
            source: Some(e),
        };
    }
    let detail = match e.detail() {
        Some(detail) => format!("{}: {detail}", e.kind()),
        None => e.kind().to_string(),
    };
    TemplateError::Render {
        location: location.to_string(),
        template: t.source.clone(),
        detail,
        source: e,
    }
}

/// Converts a minijinja value into a parameter value, or says what it was instead.
fn to_param_value(value: &Value) -> Result<ParamValue, String> {
    match value.kind() {
        ValueKind::Undefined => Err("an undefined value".to_string()),
        ValueKind::None => Ok(ParamValue::Null),
        ValueKind::Bool => Ok(ParamValue::Bool(value.is_true())),
        ValueKind::Number if value.is_integer() => value
            .as_i64()
            .map(ParamValue::Int)
            .ok_or_else(|| format!("the integer {value}, which does not fit 64 bits")),
        ValueKind::Number => match f64::try_from(value.clone()) {
            Ok(f) if f.is_finite() => Ok(ParamValue::Float(f)),
            _ => Err(format!("the number {value}")),
        },
        ValueKind::String => Ok(ParamValue::String(
            value.as_str().map(str::to_string).unwrap_or_default(),
        )),
        ValueKind::Seq | ValueKind::Iterable => {
            let iter = value.try_iter().map_err(|e| e.to_string())?;
            iter.map(|v| to_param_value(&v))
                .collect::<Result<Vec<_>, _>>()
                .map(ParamValue::Array)
        }
        ValueKind::Map => {
            let keys = value.try_iter().map_err(|e| e.to_string())?;
            let mut table = BTreeMap::new();
            for key in keys {
                let Some(name) = key.as_str() else {
                    return Err(format!("a map with the non-string key {key}"));
                };
                let item = value.get_item(&key).map_err(|e| e.to_string())?;
                table.insert(name.to_string(), to_param_value(&item)?);
            }
            Ok(ParamValue::HashTable(table))
        }
        other => Err(format!("a value of kind {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use serde_json::json;

    fn ctx() -> TemplateContext {
        let job = JobInfo {
            id: "job-1".to_string(),
            runbook: "archive".to_string(),
            scheduled_for: Utc.with_ymd_and_hms(2024, 5, 1, 2, 30, 0).unwrap(),
        };
        let mut params = BTreeMap::new();
        params.insert("domain".to_string(), json!("contoso.com"));
        params.insert("limit".to_string(), json!(5));
        TemplateContext::new(
            &job,
            &params,
            Utc.with_ymd_and_hms(2024, 5, 1, 2, 30, 7).unwrap(),
        )
        .with_step(
            "domains",
            2,
            Some(&[
                json!({"DomainName": "contoso.com"}),
                json!({"DomainName": "Fabrikam.com"}),
            ]),
        )
        .with_step("find", 3, None)
    }

    fn render_one(source: &str, item: serde_json::Value) -> Result<ParamValue, TemplateError> {
        let mut compiler = TemplateCompiler::new();
        let (value, _) = compiler.string_value("t", source).expect("compiles");
        let set = compiler.finish();
        value.render(
            &set,
            &ctx().with_item(&item),
            "parameter \"X\" of step \"s\"",
        )
    }

    fn s(v: &str) -> ParamValue {
        ParamValue::String(v.to_string())
    }

    #[test]
    fn values_render_with_the_documented_types() {
        let item = json!({
            "Alias": "bob",
            "Id": "3f1c…",
            "Enabled": false,
            "Size": 42,
            "Ratio": 0.5,
            "Addresses": ["smtp:a@x", "SMTP:b@x"],
            "Quota": {"Used": 1, "Max": 2},
        });
        let cases: Vec<(&str, ParamValue)> = vec![
            ("plain text", s("plain text")),
            ("{{ item.Id }}", s("3f1c…")),
            ("{{item.Alias}}", s("bob")),
            (
                "smtp:{{ item.Alias }}@contoso.com",
                s("smtp:bob@contoso.com"),
            ),
            // A whole-value expression keeps its native type.
            ("{{ item.Enabled }}", ParamValue::Bool(false)),
            ("{{ item.Size }}", ParamValue::Int(42)),
            ("{{ item.Ratio }}", ParamValue::Float(0.5)),
            ("{{ item.Size + 1 }}", ParamValue::Int(43)),
            ("{{ none }}", ParamValue::Null),
            (
                "{{ item.Addresses }}",
                ParamValue::Array(vec![s("smtp:a@x"), s("SMTP:b@x")]),
            ),
            (
                "{{ item.Quota }}",
                ParamValue::HashTable(BTreeMap::from([
                    ("Max".to_string(), ParamValue::Int(2)),
                    ("Used".to_string(), ParamValue::Int(1)),
                ])),
            ),
            // Text around an expression makes it a string.
            ("{{ item.Size }} items", s("42 items")),
            (" {{ item.Size }}", s(" 42")),
            ("{{ item.Size }}{{ item.Size }}", s("4242")),
            ("{{- item.Size -}}", s("42")),
            ("{{ params.domain }}", s("contoso.com")),
            ("{{ params.limit }}", ParamValue::Int(5)),
            ("{{ steps.find.count }}", ParamValue::Int(3)),
            (
                "{{ steps.domains.records | map(attribute='DomainName') | map('lower') | list }}",
                ParamValue::Array(vec![s("contoso.com"), s("fabrikam.com")]),
            ),
            ("{{ job.id }}/{{ job.runbook }}", s("job-1/archive")),
            ("{{ job.scheduled_for }}", s("2024-05-01T02:30:00Z")),
            ("{{ now }}", s("2024-05-01T02:30:07Z")),
            ("{{ item.Missing | default('x') }}", s("x")),
            ("{{ item.Missing is defined }}", ParamValue::Bool(false)),
            (
                "Department -eq {{ \"O'Brien\" | opath }}",
                s("Department -eq 'O''Brien'"),
            ),
            ("{% if item.Enabled %}on{% else %}off{% endif %}", s("off")),
            ("{# comment #}x", s("x")),
            ("<b>&</b>{{ '<i>' }}", s("<b>&</b><i>")),
        ];
        for (source, expected) in cases {
            let got = render_one(source, item.clone()).unwrap_or_else(|e| panic!("{source}: {e}"));
            assert_eq!(got, expected, "{source}");
        }
    }

    #[test]
    fn a_record_cannot_inject_parameters_or_templates() {
        let hostile = [
            "\", \"Identity\": \"admin\"",
            "{{ 7 * 7 }}",
            "{% for x in range(10) %}x{% endfor %}",
            "'; Remove-Mailbox -Identity admin; '",
            "\"}, {\"Name\": \"Remove-Mailbox\"",
            "a\nb\r\n\u{0}",
        ];
        for text in hostile {
            let item = json!({ "DisplayName": text, "Nested": { "Value": text } });
            assert_eq!(
                render_one("{{ item.DisplayName }}", item.clone()).unwrap(),
                s(text)
            );
            assert_eq!(
                render_one("Hello {{ item.DisplayName }}!", item.clone()).unwrap(),
                s(&format!("Hello {text}!"))
            );
            assert_eq!(
                render_one("{{ item.Nested }}", item.clone()).unwrap(),
                ParamValue::HashTable(BTreeMap::from([("Value".to_string(), s(text))]))
            );
        }
    }

    #[test]
    fn a_missing_property_is_an_error_not_an_empty_string() {
        let item = json!({"Alias": "bob"});
        let cases = [
            "{{ item.Missing }}",
            "x{{ item.Missing }}",
            "{{ item.Missing.Deeper }}",
            "{{ item.Missing ~ 'x' }}",
            "{{ steps.find.records }}",
        ];
        for source in cases {
            let err = render_one(source, item.clone()).unwrap_err();
            assert!(
                matches!(err, TemplateError::Undefined { .. }),
                "{source}: {err:?}"
            );
            let text = err.to_string();
            assert!(
                text.starts_with("parameter \"X\" of step \"s\": undefined value"),
                "{text}"
            );
            assert!(text.contains(source), "{text}");
        }
    }

    #[test]
    fn a_template_that_works_or_writes_too_much_is_stopped_by_its_budget() {
        let cases = [
            "{% for a in range(100000) %}{% for b in range(100000) %}x{% endfor %}{% endfor %}",
            "{{ range(100000) | map('string') | list | length }}{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}",
        ];
        for source in cases {
            let err = render_one(source, json!({})).unwrap_err();
            assert!(
                matches!(err, TemplateError::Budget { .. }),
                "{source}: {err:?}"
            );
            let text = err.to_string();
            assert!(
                text.starts_with("parameter \"X\" of step \"s\": ") && text.contains("work budget"),
                "{text}"
            );
        }
        let err = render_one("{{ 'x' * 5000000 }}", json!({})).unwrap_err();
        assert!(matches!(err, TemplateError::TooLarge { .. }), "{err:?}");
        let err = render_one("a{{ 'x' * 5000000 }}", json!({})).unwrap_err();
        assert!(matches!(err, TemplateError::TooLarge { .. }), "{err:?}");
        assert!(err.to_string().contains("bytes"), "{err}");
        // Work within the budget renders as before.
        assert_eq!(
            render_one(
                "{{ range(1000) | map('string') | join('') | length }}",
                json!({})
            )
            .unwrap(),
            ParamValue::Int(2890)
        );
    }

    #[test]
    fn opath_doubles_every_quote_powershell_reads_as_a_single_quote() {
        for (value, expected) in [
            ("O'Brien", "'O''Brien'"),
            (
                "x\u{2019} -or Name -like \u{2018}*",
                "'x\u{2019}\u{2019} -or Name -like \u{2018}\u{2018}*'",
            ),
            ("\u{201A}\u{201B}", "'\u{201A}\u{201A}\u{201B}\u{201B}'"),
            ("plain \"double\"", "'plain \"double\"'"),
        ] {
            assert_eq!(opath(value.to_string()), expected, "{value}");
        }
    }

    #[test]
    fn only_values_quoted_by_opath_may_go_into_an_opath_filter() {
        let quoted = [
            "CustomAttribute1 -eq {{ params.team | opath }}",
            "Name -eq {{- params.team|lower|opath -}} -and X -eq {{ (params.a ~ params.b) | opath }}",
            "{% if params.x %}Alias -eq {{ params.x | replace('|', '') | opath }}{% endif %}",
            "ArchiveStatus -eq 'None'",
        ];
        for source in quoted {
            assert_eq!(unquoted_in_opath(source), None, "{source}");
        }
        let unquoted = [
            ("Name -eq '{{ params.x }}'", 10),
            ("Name -eq {{ 'x' ~ params.x | opath }}", 9),
            (
                "A -eq {{ params.a | opath }} -and B -eq '{{ params.b | upper }}'",
                41,
            ),
            ("{{ params.x | opath | lower }}", 0),
            ("{{ params.x if true else 1 | opath }}", 0),
            ("X {{ params.x | opath ", 2),
        ];
        for (source, offset) in unquoted {
            assert_eq!(unquoted_in_opath(source), Some(offset), "{source}");
        }
    }

    #[test]
    fn a_failing_filter_is_a_render_error() {
        let err = render_one("{{ item.Alias | round }}", json!({"Alias": "bob"})).unwrap_err();
        assert!(matches!(err, TemplateError::Render { .. }), "{err:?}");
    }

    #[test]
    fn when_expressions_follow_jinja_truth_and_strict_undefined() {
        let item = json!({"LitigationHoldEnabled": false, "Count": 0, "Name": ""});
        let cases = [
            ("item.LitigationHoldEnabled == false", Some(true)),
            ("not item.LitigationHoldEnabled", Some(true)),
            ("item.Count", Some(false)),
            ("item.Name", Some(false)),
            ("item.Missing is defined and item.Missing", Some(false)),
            ("item.Missing is not defined", Some(true)),
            ("steps.find.count > 2", Some(true)),
            ("item.Missing == false", None),
            ("item.Missing", None),
        ];
        for (source, expected) in cases {
            let mut compiler = TemplateCompiler::new();
            let (value, _) = compiler.expression("w", source).unwrap();
            let set = compiler.finish();
            let got = value.truthy(&set, &ctx().with_item(&item), "when").ok();
            assert_eq!(got, expected, "{source}");
        }
    }

    #[test]
    fn compiling_reports_syntax_errors_with_offsets_and_references() {
        let mut compiler = TemplateCompiler::new();
        let err = compiler.string_value("a", "x {{ item.Alias ").unwrap_err();
        assert!(err.detail.contains("unexpected end of input"), "{err:?}");
        let err = compiler.expression("b", "item.X ==").unwrap_err();
        assert_eq!(err.offset, Some(7), "{err:?}");
        let (_, vars) = compiler
            .string_value("c", "{{ item.Alias }}-{{ steps.find.count }}")
            .unwrap();
        let mut vars: Vec<_> = vars.into_iter().collect();
        vars.sort();
        assert_eq!(vars, ["item.Alias", "steps.find.count"]);
        let (_, vars) = compiler.expression("d", "params.x and job.id").unwrap();
        assert!(
            vars.contains("params.x") && vars.contains("job.id"),
            "{vars:?}"
        );
    }

    #[test]
    fn odd_template_text_is_an_error_or_a_value_never_a_panic() {
        let mut compiler = TemplateCompiler::new();
        let strings = [
            "}}",
            "{{",
            "{{ }}",
            "{% %}",
            "{{ 'a' }}}}",
            "{{ x }} }}",
            "{{ {{ }} }}",
            "{#",
            "{{ item.X }}}",
            "{{{ item.X }}",
            "{% set x = 1 %}{{ x }}",
            "{{ 'é' }}",
        ];
        for (i, source) in strings.iter().enumerate() {
            let _ = compiler.string_value(&format!("s{i}"), source);
        }
        let expressions = ["item.X }}", "}}", "item.X %}", "(", "'", "item.X ~ '}}'"];
        for (i, source) in expressions.iter().enumerate() {
            let result = compiler.expression(&format!("e{i}"), source);
            assert!(result.is_err(), "{source}");
        }
        let err = compiler.expression("w", "item.X }}").unwrap_err();
        assert_eq!(err.offset, Some(7));
        assert!(err.detail.contains("without {{ }}"), "{err:?}");
    }

    #[test]
    fn templates_with_the_same_key_path_stay_apart() {
        let mut compiler = TemplateCompiler::new();
        let (first, _) = compiler.string_value("p.a.b", "{{ 1 }}").unwrap();
        let (second, _) = compiler.string_value("p.a.b", "{{ 2 }}").unwrap();
        let set = compiler.finish();
        assert_eq!(first.render(&set, &ctx(), "x").unwrap(), ParamValue::Int(1));
        assert_eq!(
            second.render(&set, &ctx(), "x").unwrap(),
            ParamValue::Int(2)
        );
    }

    #[test]
    fn literal_strings_need_no_compilation() {
        let mut compiler = TemplateCompiler::new();
        let (value, vars) = compiler.string_value("a", "{ not a template }").unwrap();
        assert!(value.is_literal());
        assert!(vars.is_empty());
    }

    #[test]
    fn compiled_templates_can_cross_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<TemplateSet>();
        assert_send_sync::<TemplateContext>();
        assert_send_sync::<ValueTemplate>();
    }
}
