//! The cmdlets the simulated tenant implements, with PowerShell's parameter binding rules
//! (unknown parameters, wrong types, hashtables without their OData type are refused) and
//! the service's error shapes: `ErrorId|Class|Message` details for most errors, the JSON
//! details form for validation errors.

use chrono::NaiveDateTime;
use serde_json::{Map, Value, json};

use super::filter::{self, Filter};
use super::org::{
    FolderPermission, Mailbox, MailboxPermission, Organisation, Quota, RecipientTypeDetails,
    ResolveError, format_size, smtp_address,
};

const HASHTABLE: &str = "#Exchange.GenericHashTable";
const HASHTABLE_COLLECTION: &str = "#Collection(Exchange.GenericHashTable)";
/// The server name the service quotes in not-found messages.
const DOMAIN_CONTROLLER: &str = "DB8PR01A012DC03.EURPR01A012.PROD.OUTLOOK.COM";

const NOT_FOUND: &str = "Microsoft.Exchange.Configuration.Tasks.ManagementObjectNotFoundException";
const AMBIGUOUS: &str = "Microsoft.Exchange.Configuration.Tasks.ManagementObjectAmbiguousException";
const BINDING: &str = "System.Management.Automation.ParameterBindingException";
const COMMAND_NOT_FOUND: &str = "System.Management.Automation.CommandNotFoundException";
const VALIDATION: &str = "Microsoft.Exchange.Data.DataValidationException";
const RECIPIENT_TASK: &str = "Microsoft.Exchange.Management.Tasks.RecipientTaskException";

/// Parameters every cmdlet accepts (PowerShell's common parameters).
const COMMON: &[&str] = &[
    "ErrorAction",
    "WarningAction",
    "ErrorVariable",
    "WarningVariable",
    "InformationAction",
    "InformationVariable",
    "OutVariable",
    "OutBuffer",
    "PipelineVariable",
    "Verbose",
    "Debug",
];
/// Parameters of cmdlets that support ShouldProcess.
const SHOULD_PROCESS: &[&str] = &["Confirm", "WhatIf"];

/// A terminating error: status and body.
#[derive(Clone, Debug, PartialEq)]
pub struct Failure {
    pub status: u16,
    pub body: Value,
}

fn error_id(class: &str) -> String {
    let hash = class.bytes().fold(0x811c_9dc5_u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    });
    format!("Ex{:06X}", hash & 0xFF_FFFF)
}

fn envelope(status: u16, detail_message: String) -> Failure {
    let code = match status {
        400 => "BadRequest",
        404 => "NotFound",
        _ => "InternalServerError",
    };
    Failure {
        status,
        body: json!({"error": {
            "code": code,
            "message": "Error executing cmdlet",
            "details": [{"code": "Client", "target": "", "message": detail_message}],
            "innererror": {
                "message": "Error executing cmdlet",
                "type": "Microsoft.Exchange.Admin.OData.Core.ODataServiceException",
            },
        }}),
    }
}

/// The `ErrorId|Class|Message` form.
pub fn pipe(status: u16, class: &str, message: impl Into<String>) -> Failure {
    envelope(
        status,
        format!("{}|{class}|{}", error_id(class), message.into()),
    )
}

/// The JSON-in-a-string form.
pub fn json_form(status: u16, class: &str, string_id: &str, message: impl Into<String>) -> Failure {
    let detail = json!({
        "Message": message.into(),
        "ClassName": class,
        "localizedString": {"stringId": string_id, "Params": []},
    });
    envelope(status, detail.to_string())
}

fn not_found(identity: &str) -> Failure {
    pipe(
        404,
        NOT_FOUND,
        format!(
            "The operation couldn't be performed because object '{identity}' couldn't be found on '{DOMAIN_CONTROLLER}'."
        ),
    )
}

fn unknown_parameter(name: &str) -> Failure {
    pipe(
        400,
        BINDING,
        format!("A parameter cannot be found that matches parameter name '{name}'."),
    )
}

pub fn unknown_cmdlet(name: &str) -> Failure {
    pipe(
        400,
        COMMAND_NOT_FOUND,
        format!(
            "The term '{name}' is not recognized as a name of a cmdlet, function, script file, or executable program. Check the spelling of the name, or if a path was included, verify that the path is correct and try again."
        ),
    )
}

fn conversion(name: &str, value: &Value, to: &str) -> Failure {
    let shown = match value {
        Value::String(s) => s.clone(),
        Value::Object(_) => {
            "System.Collections.Generic.Dictionary`2[System.String,System.Object]".to_string()
        }
        other => other.to_string(),
    };
    pipe(
        400,
        BINDING,
        format!(
            "Cannot process argument transformation on parameter '{name}'. Cannot convert value \"{shown}\" to type \"{to}\"."
        ),
    )
}

fn missing(name: &str) -> Failure {
    pipe(
        400,
        BINDING,
        format!(
            "Cannot process command because of one or more missing mandatory parameters: {name}."
        ),
    )
}

fn validation(string_id: &str, message: impl Into<String>) -> Failure {
    json_form(400, VALIDATION, string_id, message)
}

/// The mailbox `identity` names, with its position: the target of every write cmdlet.
fn target_mailbox<'o>(
    org: &'o Organisation,
    identity: &str,
) -> Result<(usize, &'o Mailbox), Failure> {
    let position = resolve(org, identity)?;
    let mailbox = org
        .mailbox_at(position)
        .ok_or_else(|| not_found(identity))?;
    Ok((position, mailbox))
}

fn resolve(org: &Organisation, identity: &str) -> Result<usize, Failure> {
    org.resolve(identity).map_err(|e| match e {
        ResolveError::NotFound => not_found(identity),
        ResolveError::Ambiguous => pipe(
            400,
            AMBIGUOUS,
            format!(
                "The operation couldn't be performed because '{identity}' matches multiple entries."
            ),
        ),
    })
}

/// What a cmdlet produced.
#[derive(Debug)]
pub enum Outcome {
    Records {
        records: Vec<Value>,
        warnings: Vec<String>,
        /// Non-terminating errors, in the pipe form.
        errors: Vec<String>,
    },
    /// A read the HTTP layer pages through lazily.
    Query { query: Query, warnings: Vec<String> },
    /// A high-impact cmdlet asked instead of acting.
    Confirmation(String),
}

impl Outcome {
    fn records(records: Vec<Value>) -> Self {
        Outcome::Records {
            records,
            warnings: Vec::new(),
            errors: Vec::new(),
        }
    }

    fn nothing(warnings: Vec<String>) -> Self {
        Outcome::Records {
            records: Vec::new(),
            warnings,
            errors: Vec::new(),
        }
    }
}

/// How many results a read may return.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    /// No `-ResultSize`: the cmdlet's default of 1000, with its warning.
    Default,
    Count(usize),
    Unlimited,
}

impl Limit {
    pub fn get(self) -> Option<usize> {
        match self {
            Limit::Default => Some(1000),
            Limit::Count(n) => Some(n),
            Limit::Unlimited => None,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum View {
    Mailbox,
    /// `Get-EXOMailbox`: the minimum property set plus `-Properties`, or everything.
    ExoMailbox {
        extra: Vec<String>,
        all: bool,
    },
    CasMailbox,
}

const EXO_MINIMUM: &[&str] = &[
    "ExternalDirectoryObjectId",
    "UserPrincipalName",
    "Alias",
    "DisplayName",
    "EmailAddresses",
    "PrimarySmtpAddress",
    "RecipientType",
    "RecipientTypeDetails",
    "Identity",
    "Id",
    "ExchangeVersion",
    "Name",
    "DistinguishedName",
    "OrganizationId",
    "Guid",
];

/// A mailbox read over the whole organisation, evaluated one mailbox at a time.
#[derive(Clone, Debug, PartialEq)]
pub struct Query {
    pub view: View,
    pub filter: Option<Filter>,
    pub types: Option<Vec<RecipientTypeDetails>>,
    pub archive_only: bool,
    pub limit: Limit,
}

impl Query {
    fn full_record(&self, org: &Organisation, m: &Mailbox) -> Map<String, Value> {
        match self.view {
            View::CasMailbox => m.cas_record(),
            _ => m.record(org),
        }
    }

    /// The output record of the mailbox at `position`, when it matches.
    pub fn record_at(&self, org: &Organisation, position: usize) -> Option<Value> {
        let m = org.mailbox_at(position)?;
        if let Some(types) = &self.types
            && !types.contains(&m.recipient_type_details)
        {
            return None;
        }
        if self.archive_only && m.archive.is_none() {
            return None;
        }
        let record = self.full_record(org, m);
        if let Some(filter) = &self.filter
            && !filter.matches(&record)
        {
            return None;
        }
        Some(Value::Object(self.project(record)))
    }

    fn project(&self, record: Map<String, Value>) -> Map<String, Value> {
        match &self.view {
            View::ExoMailbox { extra, all: false } => record
                .into_iter()
                .filter(|(k, _)| {
                    let base = k.split('@').next().unwrap_or(k);
                    EXO_MINIMUM.iter().any(|p| p.eq_ignore_ascii_case(base))
                        || extra.iter().any(|p| p.eq_ignore_ascii_case(base))
                })
                .collect(),
            _ => record,
        }
    }
}

/// Bound parameters of one call.
struct Args<'a> {
    map: &'a Map<String, Value>,
}

impl<'a> Args<'a> {
    /// Refuses hashtables without their OData type (the request cannot even be
    /// deserialised) and then unknown parameters, as the service's binder does.
    fn check(&self, allowed: &[&str], should_process: bool) -> Result<(), Failure> {
        for (key, value) in self.map {
            if !key.contains('@') {
                check_encoding(self.map, key, value)?;
            }
        }
        for key in self.map.keys() {
            if key.contains('@') {
                continue;
            }
            let known = allowed
                .iter()
                .chain(COMMON)
                .any(|p| p.eq_ignore_ascii_case(key))
                || (should_process && SHOULD_PROCESS.iter().any(|p| p.eq_ignore_ascii_case(key)));
            if !known {
                return Err(unknown_parameter(key));
            }
        }
        Ok(())
    }

    fn get(&self, name: &str) -> Option<&'a Value> {
        self.map
            .iter()
            .find(|(k, _)| !k.contains('@') && k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }

    fn text(&self, name: &str) -> Result<Option<String>, Failure> {
        match self.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(Value::Number(n)) => Ok(Some(n.to_string())),
            Some(other) => Err(conversion(name, other, "System.String")),
        }
    }

    fn required_text(&self, name: &str) -> Result<String, Failure> {
        self.text(name)?
            .filter(|s| !s.trim().is_empty())
            .ok_or_else(|| missing(name))
    }

    /// A bool or switch: PowerShell accepts booleans and numbers, never strings.
    fn flag(&self, name: &str) -> Result<Option<bool>, Failure> {
        match self.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(Value::Number(n)) => Ok(Some(n.as_f64().is_some_and(|f| f != 0.0))),
            Some(other) => Err(pipe(
                400,
                BINDING,
                format!(
                    "Cannot process argument transformation on parameter '{name}'. Cannot convert value \"{}\" to type \"System.Boolean\". Boolean parameters accept only Boolean values and numbers, such as $True, $False, 1 or 0.",
                    match other {
                        Value::String(s) => s.clone(),
                        o => o.to_string(),
                    }
                ),
            )),
        }
    }

    fn texts(&self, name: &str) -> Result<Option<Vec<String>>, Failure> {
        match self.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(vec![s.clone()])),
            Some(Value::Array(items)) => items
                .iter()
                .map(|i| match i {
                    Value::String(s) => Ok(s.clone()),
                    other => Err(conversion(name, other, "System.String[]")),
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Some),
            Some(other) => Err(conversion(name, other, "System.String[]")),
        }
    }
}

/// Hashtables must say they are hashtables, and arrays of them must say so beside them.
fn check_encoding(parent: &Map<String, Value>, key: &str, value: &Value) -> Result<(), Failure> {
    match value {
        Value::Object(object) => {
            if object.get("@odata.type").and_then(Value::as_str) != Some(HASHTABLE) {
                return Err(conversion(key, value, "System.Collections.Hashtable"));
            }
            for (k, v) in object {
                if !k.contains('@') {
                    check_encoding(object, k, v)?;
                }
            }
            Ok(())
        }
        Value::Array(items) if items.iter().any(Value::is_object) => {
            let sibling = parent
                .get(&format!("{key}@odata.type"))
                .and_then(Value::as_str);
            if sibling != Some(HASHTABLE_COLLECTION) {
                return Err(conversion(key, value, "System.Collections.Hashtable[]"));
            }
            for item in items {
                check_encoding(parent, key, item)?;
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

fn result_size(args: &Args<'_>) -> Result<Limit, Failure> {
    match args.get("ResultSize") {
        None | Some(Value::Null) => Ok(Limit::Default),
        Some(Value::String(s)) if s.eq_ignore_ascii_case("unlimited") => Ok(Limit::Unlimited),
        Some(Value::String(s)) if s.trim().parse::<usize>().is_ok() => {
            Ok(Limit::Count(s.trim().parse().unwrap_or(0)))
        }
        Some(Value::Number(n)) if n.as_u64().is_some() => {
            Ok(Limit::Count(n.as_u64().unwrap_or(0) as usize))
        }
        Some(other) => Err(conversion(
            "ResultSize",
            other,
            "Microsoft.Exchange.Data.Unlimited`1[System.UInt32]",
        )),
    }
}

/// Runs one cmdlet against the organisation.
pub fn run(
    org: &mut Organisation,
    cmdlet: &str,
    parameters: &Map<String, Value>,
) -> Result<Outcome, Failure> {
    let args = Args { map: parameters };
    match cmdlet.to_ascii_lowercase().as_str() {
        "get-mailbox" => get_mailbox(org, &args, false),
        "get-exomailbox" => get_mailbox(org, &args, true),
        "set-mailbox" => set_mailbox(org, &args),
        "enable-mailbox" => enable_mailbox(org, &args),
        "get-mailboxstatistics" | "get-exomailboxstatistics" => mailbox_statistics(org, &args),
        "get-mailboxpermission" | "get-exomailboxpermission" => get_mailbox_permission(org, &args),
        "add-mailboxpermission" => add_mailbox_permission(org, &args),
        "remove-mailboxpermission" => remove_mailbox_permission(org, &args),
        "get-casmailbox" | "get-exocasmailbox" => get_cas_mailbox(org, &args),
        "set-casmailbox" => set_cas_mailbox(org, &args),
        "set-mailboxautoreplyconfiguration" => set_auto_reply(org, &args),
        "get-organizationconfig" => {
            args.check(&[], false)?;
            Ok(Outcome::records(vec![Value::Object(org.config_record())]))
        }
        "get-accepteddomain" => get_accepted_domain(org, &args),
        "get-mailboxfolderpermission" | "get-exomailboxfolderpermission" => {
            get_folder_permission(org, &args)
        }
        "add-mailboxfolderpermission" => change_folder_permission(org, &args, Change::Add),
        "set-mailboxfolderpermission" => change_folder_permission(org, &args, Change::Set),
        "remove-mailboxfolderpermission" => change_folder_permission(org, &args, Change::Remove),
        _ => Err(unknown_cmdlet(cmdlet)),
    }
}

fn parse_filter(org: &Organisation, text: &str, view: &View) -> Result<Filter, Failure> {
    let filter = filter::parse(text).map_err(|e| {
        pipe(
            400,
            BINDING,
            format!(
                "Cannot bind parameter 'Filter' to the target. Exception setting \"Filter\": \"Invalid filter syntax. For a description of the filter parameter syntax see the command help.\n\"{text}\" at position {}.\" ({})",
                e.position + 1,
                e.message
            ),
        )
    })?;
    if let Some(sample) = org.mailboxes().first() {
        let record = match view {
            View::CasMailbox => sample.cas_record(),
            _ => sample.record(org),
        };
        if let Some(unknown) = filter
            .properties()
            .into_iter()
            .find(|p| filter::lookup(&record, p).is_none())
        {
            return Err(pipe(
                400,
                BINDING,
                format!(
                    "Cannot bind parameter 'Filter' to the target. Exception setting \"Filter\": \"'{unknown}' is not a recognized filterable property. For a description of the filter parameter syntax see the command help.\""
                ),
            ));
        }
    }
    Ok(filter)
}

fn read_query(org: &Organisation, args: &Args<'_>, view: View) -> Result<Query, Failure> {
    let types = match args.texts("RecipientTypeDetails")? {
        None => None,
        Some(names) => Some(
            names
                .iter()
                .flat_map(|n| n.split(','))
                .map(|n| {
                    RecipientTypeDetails::parse(n).ok_or_else(|| {
                        conversion(
                            "RecipientTypeDetails",
                            &Value::String(n.to_string()),
                            "Microsoft.Exchange.Data.Directory.Recipient.RecipientTypeDetails",
                        )
                    })
                })
                .collect::<Result<Vec<_>, _>>()?,
        ),
    };
    let filter = match args.text("Filter")? {
        Some(text) => Some(parse_filter(org, &text, &view)?),
        None => None,
    };
    Ok(Query {
        view,
        filter,
        types,
        archive_only: args.flag("Archive")?.unwrap_or(false),
        limit: result_size(args)?,
    })
}

fn get_mailbox(org: &Organisation, args: &Args<'_>, exo: bool) -> Result<Outcome, Failure> {
    let view = if exo {
        args.check(
            &[
                "Identity",
                "ResultSize",
                "RecipientTypeDetails",
                "Filter",
                "Properties",
                "PropertySets",
                "Archive",
                "UserPrincipalName",
                "PrimarySmtpAddress",
                "ExternalDirectoryObjectId",
            ],
            false,
        )?;
        let extra: Vec<String> = args
            .texts("Properties")?
            .unwrap_or_default()
            .iter()
            .flat_map(|p| p.split(','))
            .map(|p| p.trim().to_string())
            .collect();
        let all = args
            .texts("PropertySets")?
            .unwrap_or_default()
            .iter()
            .any(|s| s.eq_ignore_ascii_case("All"));
        View::ExoMailbox { extra, all }
    } else {
        args.check(
            &[
                "Identity",
                "ResultSize",
                "RecipientTypeDetails",
                "Filter",
                "Archive",
            ],
            false,
        )?;
        View::Mailbox
    };
    let query = read_query(org, args, view)?;
    let identity = match args.text("Identity")? {
        Some(identity) => Some(identity),
        None if exo => [
            "UserPrincipalName",
            "PrimarySmtpAddress",
            "ExternalDirectoryObjectId",
        ]
        .iter()
        .find_map(|p| args.text(p).ok().flatten()),
        None => None,
    };
    if let Some(identity) = identity {
        let position = resolve(org, &identity)?;
        let record = query
            .record_at(org, position)
            .ok_or_else(|| not_found(&identity))?;
        return Ok(Outcome::records(vec![record]));
    }
    Ok(Outcome::Query {
        query,
        warnings: Vec::new(),
    })
}

fn get_cas_mailbox(org: &Organisation, args: &Args<'_>) -> Result<Outcome, Failure> {
    args.check(
        &["Identity", "ResultSize", "Filter", "RecipientTypeDetails"],
        false,
    )?;
    let query = read_query(org, args, View::CasMailbox)?;
    if let Some(identity) = args.text("Identity")? {
        let position = resolve(org, &identity)?;
        let record = query
            .record_at(org, position)
            .ok_or_else(|| not_found(&identity))?;
        return Ok(Outcome::records(vec![record]));
    }
    Ok(Outcome::Query {
        query,
        warnings: Vec::new(),
    })
}

fn no_change_warning(m: &Mailbox) -> String {
    format!(
        "The command completed successfully but no settings of '{}' have been modified.",
        m.name
    )
}

fn valid_address(address: &str) -> bool {
    let mut parts = address.split('@');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(local), Some(domain), None) => {
            !local.is_empty()
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
                && !address
                    .chars()
                    .any(|c| c.is_whitespace() || c == ',' || c == ';')
        }
        _ => false,
    }
}

fn bad_address(address: &str) -> Failure {
    validation(
        "ErrorInvalidSmtpAddress",
        format!(
            "The email address \"{address}\" isn't correct. Please use this format: user name, the @ sign, followed by the domain name. For example, tonysmith@contoso.com or tony.smith@contoso.com."
        ),
    )
}

/// A proxy address as Exchange stores it: `SMTP:` primary, `smtp:` secondary.
fn proxy_address(text: &str) -> Result<(bool, String), Failure> {
    let (primary, address) = match text.split_once(':') {
        Some(("SMTP", address)) => (true, address),
        Some((prefix, address)) if prefix.eq_ignore_ascii_case("smtp") => (false, address),
        Some(_) => return Err(bad_address(text)),
        None => (false, text),
    };
    let address = address.trim();
    if !valid_address(address) {
        return Err(bad_address(address));
    }
    Ok((primary, address.to_string()))
}

fn set_addresses(
    org: &Organisation,
    position: usize,
    m: &mut Mailbox,
    value: &Value,
) -> Result<(), Failure> {
    let as_list = |v: Option<&Value>| -> Result<Vec<String>, Failure> {
        match v {
            None | Some(Value::Null) => Ok(Vec::new()),
            Some(Value::String(s)) => Ok(vec![s.clone()]),
            Some(Value::Array(items)) => items
                .iter()
                .map(|i| {
                    i.as_str().map(str::to_string).ok_or_else(|| {
                        conversion(
                            "EmailAddresses",
                            i,
                            "Microsoft.Exchange.Data.ProxyAddressCollection",
                        )
                    })
                })
                .collect(),
            Some(other) => Err(conversion(
                "EmailAddresses",
                other,
                "Microsoft.Exchange.Data.ProxyAddressCollection",
            )),
        }
    };
    let mut addresses = m.email_addresses.clone();
    match value {
        Value::Object(table) => {
            let entry = |name: &str| {
                table
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case(name))
                    .map(|(_, v)| v)
            };
            for text in as_list(entry("Remove"))? {
                let (_, address) = proxy_address(&text)?;
                if m.primary_smtp_address.eq_ignore_ascii_case(&address) {
                    return Err(validation(
                        "ErrorPrimarySmtpAddressCannotBeRemoved",
                        format!("The primary SMTP address \"{address}\" can't be removed."),
                    ));
                }
                addresses
                    .retain(|a| !smtp_address(a).is_some_and(|x| x.eq_ignore_ascii_case(&address)));
            }
            for text in as_list(entry("Add"))? {
                let (primary, address) = proxy_address(&text)?;
                addresses
                    .retain(|a| !smtp_address(a).is_some_and(|x| x.eq_ignore_ascii_case(&address)));
                if primary {
                    for a in &mut addresses {
                        if let Some(rest) = a.strip_prefix("SMTP:") {
                            *a = format!("smtp:{rest}");
                        }
                    }
                    addresses.insert(0, format!("SMTP:{address}"));
                } else {
                    addresses.push(format!("smtp:{address}"));
                }
            }
        }
        other => {
            addresses.clear();
            for text in as_list(Some(other))? {
                let (primary, address) = proxy_address(&text)?;
                addresses.push(format!(
                    "{}:{address}",
                    if primary { "SMTP" } else { "smtp" }
                ));
            }
        }
    }
    let primaries: Vec<&String> = addresses
        .iter()
        .filter(|a| a.starts_with("SMTP:"))
        .collect();
    if primaries.len() != 1 {
        return Err(validation(
            "ErrorOnePrimarySmtpAddress",
            "The EmailAddresses collection must contain exactly one primary SMTP address (prefix \"SMTP:\").",
        ));
    }
    for proxy in &addresses {
        let Some(address) = smtp_address(proxy) else {
            continue;
        };
        let domain = address.rsplit('@').next().unwrap_or("");
        if !org.is_accepted_domain(domain) {
            return Err(validation(
                "ErrorNotAcceptedDomain",
                format!(
                    "The domain name in the email address \"{address}\" isn't an accepted domain for your organization."
                ),
            ));
        }
        if let Some(owner) = org.address_owner(address)
            && owner != position
        {
            let other = org
                .mailbox_at(owner)
                .map(|o| o.name.clone())
                .unwrap_or_default();
            return Err(json_form(
                400,
                "Microsoft.Exchange.Data.Directory.ADObjectAlreadyExistsException",
                "ErrorProxyAddressAlreadyExists",
                format!(
                    "The proxy address \"SMTP:{address}\" is already being used by the proxy addresses or LegacyExchangeDN of \"{other}\". Please choose another proxy address."
                ),
            ));
        }
    }
    m.primary_smtp_address = smtp_address(primaries[0]).unwrap_or_default().to_string();
    m.email_addresses = addresses;
    Ok(())
}

fn quota(args: &Args<'_>, name: &str) -> Result<Option<Quota>, Failure> {
    match args.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n.as_u64().map(|b| Some(Quota::Bytes(b))).ok_or_else(|| {
            conversion(
                name,
                &Value::Number(n.clone()),
                "Microsoft.Exchange.Data.Unlimited`1[Microsoft.Exchange.Data.ByteQuantifiedSize]",
            )
        }),
        Some(Value::String(s)) => Quota::parse(s).map(Some).ok_or_else(|| {
            conversion(
                name,
                &Value::String(s.clone()),
                "Microsoft.Exchange.Data.Unlimited`1[Microsoft.Exchange.Data.ByteQuantifiedSize]",
            )
        }),
        Some(other) => Err(conversion(
            name,
            other,
            "Microsoft.Exchange.Data.Unlimited`1[Microsoft.Exchange.Data.ByteQuantifiedSize]",
        )),
    }
}

fn parse_date(name: &str, value: &Value) -> Result<NaiveDateTime, Failure> {
    let text = value
        .as_str()
        .ok_or_else(|| conversion(name, value, "System.DateTime"))?;
    let trimmed = text.trim().trim_end_matches('Z');
    NaiveDateTime::parse_from_str(trimmed, "%Y-%m-%dT%H:%M:%S%.f")
        .or_else(|_| NaiveDateTime::parse_from_str(trimmed, "%Y-%m-%dT%H:%M:%S"))
        .map_err(|_| conversion(name, value, "System.DateTime"))
}

fn set_mailbox(org: &mut Organisation, args: &Args<'_>) -> Result<Outcome, Failure> {
    args.check(
        &[
            "Identity",
            "EmailAddresses",
            "ForwardingSmtpAddress",
            "ForwardingAddress",
            "DeliverToMailboxAndForward",
            "ProhibitSendQuota",
            "ProhibitSendReceiveQuota",
            "IssueWarningQuota",
            "UseDatabaseQuotaDefaults",
            "HiddenFromAddressListsEnabled",
            "LitigationHoldEnabled",
            "EndDateForRetentionHold",
            "DisplayName",
            "CustomAttribute1",
            "Type",
            "GrantSendOnBehalfTo",
            "AuditEnabled",
            "Force",
        ],
        true,
    )?;
    let identity = args.required_text("Identity")?;
    let (position, original) = target_mailbox(org, &identity)?;
    let original = original.clone();
    let mut m = original.clone();

    if let Some(value) = args.get("EmailAddresses") {
        set_addresses(org, position, &mut m, value)?;
    }
    if args.get("ForwardingSmtpAddress").is_some() {
        m.forwarding_smtp_address = match args.text("ForwardingSmtpAddress")? {
            None => None,
            Some(text) if text.trim().is_empty() => None,
            Some(text) => {
                let address = smtp_address(text.trim()).unwrap_or(text.trim()).to_string();
                if !valid_address(&address) {
                    return Err(bad_address(&address));
                }
                Some(format!("smtp:{address}"))
            }
        };
    }
    if args.get("ForwardingAddress").is_some() {
        m.forwarding_address = match args.text("ForwardingAddress")? {
            None => None,
            Some(target) => {
                let at = resolve(org, &target)?;
                org.mailbox_at(at).map(|t| t.name.clone())
            }
        };
    }
    if let Some(b) = args.flag("DeliverToMailboxAndForward")? {
        m.deliver_to_mailbox_and_forward = b;
    }
    if let Some(q) = quota(args, "ProhibitSendQuota")? {
        m.prohibit_send_quota = q;
    }
    if let Some(q) = quota(args, "ProhibitSendReceiveQuota")? {
        m.prohibit_send_receive_quota = q;
    }
    if let Some(q) = quota(args, "IssueWarningQuota")? {
        m.issue_warning_quota = q;
    }
    if let Some(b) = args.flag("UseDatabaseQuotaDefaults")? {
        m.use_database_quota_defaults = b;
    }
    if m.issue_warning_quota > m.prohibit_send_quota
        || m.prohibit_send_quota > m.prohibit_send_receive_quota
    {
        return Err(validation(
            "ErrorQuotaOrder",
            format!(
                "The value of property 'ProhibitSendQuota' must be less than or equal to that of property 'ProhibitSendReceiveQuota' and greater than or equal to that of property 'IssueWarningQuota'. IssueWarningQuota: {}, ProhibitSendQuota: {}, ProhibitSendReceiveQuota: {}.",
                m.issue_warning_quota.display(),
                m.prohibit_send_quota.display(),
                m.prohibit_send_receive_quota.display()
            ),
        ));
    }
    if let Some(b) = args.flag("HiddenFromAddressListsEnabled")? {
        m.hidden_from_address_lists_enabled = b;
    }
    if let Some(b) = args.flag("LitigationHoldEnabled")? {
        m.litigation_hold_enabled = b;
    }
    if let Some(value) = args.get("EndDateForRetentionHold") {
        m.end_date_for_retention_hold = match value {
            Value::Null => None,
            v => Some(parse_date("EndDateForRetentionHold", v)?),
        };
    }
    if let Some(name) = args.text("DisplayName")? {
        m.display_name = name;
    }
    if args.get("CustomAttribute1").is_some() {
        m.custom_attribute1 = args.text("CustomAttribute1")?.filter(|s| !s.is_empty());
    }
    if let Some(kind) = args.text("Type")? {
        m.recipient_type_details =
            RecipientTypeDetails::from_conversion_type(&kind).ok_or_else(|| {
                conversion(
                    "Type",
                    &Value::String(kind.clone()),
                    "Microsoft.Exchange.Management.RecipientTasks.ConvertibleMailboxSubType",
                )
            })?;
        m.account_disabled = m.recipient_type_details != RecipientTypeDetails::UserMailbox;
    }
    if let Some(value) = args.get("GrantSendOnBehalfTo") {
        let names = |v: Option<&Value>| -> Result<Vec<String>, Failure> {
            let list: Vec<String> = match v {
                None | Some(Value::Null) => Vec::new(),
                Some(Value::String(s)) => vec![s.clone()],
                Some(Value::Array(items)) => items
                    .iter()
                    .filter_map(Value::as_str)
                    .map(str::to_string)
                    .collect(),
                Some(other) => {
                    return Err(conversion(
                        "GrantSendOnBehalfTo",
                        other,
                        "Microsoft.Exchange.Configuration.Tasks.RecipientWithAdUserGroupIdParameter",
                    ));
                }
            };
            list.iter()
                .map(|id| {
                    resolve(org, id).map(|p| {
                        org.mailbox_at(p)
                            .map(|t| t.name.clone())
                            .unwrap_or_default()
                    })
                })
                .collect()
        };
        match value {
            Value::Object(table) => {
                let entry = |n: &str| {
                    table
                        .iter()
                        .find(|(k, _)| k.eq_ignore_ascii_case(n))
                        .map(|(_, v)| v)
                };
                for name in names(entry("Remove"))? {
                    m.grant_send_on_behalf_to.retain(|x| x != &name);
                }
                for name in names(entry("Add"))? {
                    if !m.grant_send_on_behalf_to.contains(&name) {
                        m.grant_send_on_behalf_to.push(name);
                    }
                }
            }
            other => m.grant_send_on_behalf_to = names(Some(other))?,
        }
    }
    if let Some(b) = args.flag("AuditEnabled")? {
        m.audit_enabled = b;
    }
    if m == original {
        return Ok(Outcome::nothing(vec![no_change_warning(&m)]));
    }
    org.replace(position, m);
    Ok(Outcome::nothing(Vec::new()))
}

fn enable_mailbox(org: &mut Organisation, args: &Args<'_>) -> Result<Outcome, Failure> {
    args.check(&["Identity", "Archive", "AutoExpandingArchive"], true)?;
    let identity = args.required_text("Identity")?;
    let archive = args.flag("Archive")?.unwrap_or(false);
    let auto_expanding = args.flag("AutoExpandingArchive")?.unwrap_or(false);
    if !archive && !auto_expanding {
        return Err(pipe(
            400,
            BINDING,
            "Parameter set cannot be resolved using the specified named parameters. One or more parameters issued cannot be used together or an insufficient number of parameters were provided.",
        ));
    }
    let (position, m) = target_mailbox(org, &identity)?;
    let mut m = m.clone();
    if archive {
        if m.archive.is_some() {
            return Err(pipe(
                500,
                RECIPIENT_TASK,
                format!("The mailbox {} is already enabled for archive.", m.name),
            ));
        }
        m.archive = Some(super::org::Archive {
            guid: uuid::Uuid::new_v4(),
            usage: super::org::Usage {
                item_count: 0,
                total_item_bytes: 0,
                deleted_item_count: 0,
                deleted_item_bytes: 0,
                last_logon_time: None,
            },
        });
    }
    if auto_expanding {
        if m.archive.is_none() {
            return Err(pipe(
                500,
                RECIPIENT_TASK,
                format!(
                    "Auto-expanding archiving can't be enabled for {} because it has no archive.",
                    m.name
                ),
            ));
        }
        m.auto_expanding_archive = true;
    }
    let record = Value::Object(m.record(org));
    org.replace(position, m);
    Ok(Outcome::records(vec![record]))
}

fn statistics_record(org: &Organisation, m: &Mailbox, archive: bool) -> Option<Value> {
    let (usage, guid) = if archive {
        let a = m.archive.as_ref()?;
        (&a.usage, a.guid)
    } else {
        (&m.usage, m.exchange_guid)
    };
    let used = usage.total_item_bytes;
    let status = match m.prohibit_send_quota {
        Quota::Bytes(limit) if used >= limit => "ProhibitSend",
        _ => "BelowLimit",
    };
    Some(json!({
        "Identity": guid.to_string(),
        "DisplayName": if archive { format!("In-Place Archive -{}", m.display_name) } else { m.display_name.clone() },
        "MailboxGuid@odata.type": "#Guid",
        "MailboxGuid": guid.to_string(),
        "ItemCount": usage.item_count,
        "DeletedItemCount": usage.deleted_item_count,
        "TotalItemSize": format_size(usage.total_item_bytes),
        "TotalDeletedItemSize": format_size(usage.deleted_item_bytes),
        "LastLogonTime": usage.last_logon_time.map(|t| t.to_rfc3339()),
        "MailboxTypeDetail": m.recipient_type_details.as_str(),
        "IsArchiveMailbox": archive,
        "StorageLimitStatus": status,
        "Database": org.database_for(m),
    }))
}

fn mailbox_statistics(org: &Organisation, args: &Args<'_>) -> Result<Outcome, Failure> {
    args.check(
        &["Identity", "Archive", "IncludeSoftDeletedRecipients"],
        false,
    )?;
    let identities = args.texts("Identity")?.ok_or_else(|| missing("Identity"))?;
    let archive = args.flag("Archive")?.unwrap_or(false);
    // One identity: a terminating error. Several (pipeline input): each failure is a
    // non-terminating error and the others are still returned.
    if let [identity] = identities.as_slice() {
        let position = resolve(org, identity)?;
        let m = org
            .mailbox_at(position)
            .ok_or_else(|| not_found(identity))?;
        let record = statistics_record(org, m, archive).ok_or_else(|| {
            pipe(
                404,
                NOT_FOUND,
                format!("The archive of mailbox '{identity}' couldn't be found."),
            )
        })?;
        return Ok(Outcome::records(vec![record]));
    }
    let mut records = Vec::new();
    let mut errors = Vec::new();
    for identity in &identities {
        let record = org
            .resolve(identity)
            .ok()
            .and_then(|p| org.mailbox_at(p))
            .and_then(|m| statistics_record(org, m, archive));
        match record {
            Some(record) => records.push(record),
            None => errors.push(format!(
                "{}|{NOT_FOUND}|The operation couldn't be performed because object '{identity}' couldn't be found on '{DOMAIN_CONTROLLER}'.",
                error_id(NOT_FOUND)
            )),
        }
    }
    Ok(Outcome::Records {
        records,
        warnings: Vec::new(),
        errors,
    })
}

const MAILBOX_RIGHTS: &[&str] = &[
    "ChangeOwner",
    "ChangePermission",
    "DeleteItem",
    "ExternalAccount",
    "FullAccess",
    "ReadPermission",
];

fn rights(args: &Args<'_>, name: &str, allowed: &[&str]) -> Result<Vec<String>, Failure> {
    let list = args.texts(name)?.ok_or_else(|| missing(name))?;
    list.iter()
        .flat_map(|r| r.split(','))
        .map(|r| {
            allowed
                .iter()
                .find(|a| a.eq_ignore_ascii_case(r.trim()))
                .map(|a| a.to_string())
                .ok_or_else(|| {
                    pipe(
                        400,
                        BINDING,
                        format!(
                            "Cannot process argument transformation on parameter '{name}'. Cannot convert value \"{}\" to type \"{name}\". Error: \"Unable to match the identifier name {} to a valid enumerator name. Specify one of the following enumerator names and try again: {}\"",
                            r.trim(), r.trim(), allowed.join(", ")
                        ),
                    )
                })
        })
        .collect()
}

fn permission_record(m: &Mailbox, p: &MailboxPermission) -> Value {
    json!({
        "Identity": m.name,
        "User": p.user,
        "AccessRights": p.access_rights,
        "IsInherited": false,
        "Deny": false,
        "InheritanceType": p.inheritance_type,
    })
}

fn get_mailbox_permission(org: &Organisation, args: &Args<'_>) -> Result<Outcome, Failure> {
    args.check(&["Identity", "User", "Owner", "ResultSize"], false)?;
    let identity = args.required_text("Identity")?;
    let (position, m) = target_mailbox(org, &identity)?;
    let user = match args.text("User")? {
        Some(user) => Some(trustee(org, &user)?),
        None => None,
    };
    let mut entries = vec![MailboxPermission {
        user: "NT AUTHORITY\\SELF".to_string(),
        access_rights: vec!["FullAccess".into(), "ReadPermission".into()],
        inheritance_type: "All".into(),
    }];
    entries.extend(
        org.mailbox_permissions
            .get(&position)
            .cloned()
            .unwrap_or_default(),
    );
    let records = entries
        .iter()
        .filter(|p| user.as_ref().is_none_or(|u| p.user.eq_ignore_ascii_case(u)))
        .map(|p| permission_record(m, p))
        .collect();
    Ok(Outcome::records(records))
}

/// A trustee for mailbox permissions: a mailbox, shown by its UPN.
fn trustee(org: &Organisation, user: &str) -> Result<String, Failure> {
    let at = resolve(org, user)?;
    Ok(org
        .mailbox_at(at)
        .map(|t| t.user_principal_name.clone())
        .unwrap_or_default())
}

fn add_mailbox_permission(org: &mut Organisation, args: &Args<'_>) -> Result<Outcome, Failure> {
    args.check(
        &[
            "Identity",
            "User",
            "AccessRights",
            "InheritanceType",
            "AutoMapping",
            "Deny",
        ],
        true,
    )?;
    let identity = args.required_text("Identity")?;
    let position = resolve(org, &identity)?;
    let user = trustee(org, &args.required_text("User")?)?;
    let rights = rights(args, "AccessRights", MAILBOX_RIGHTS)?;
    let inheritance = args
        .text("InheritanceType")?
        .unwrap_or_else(|| "All".into());
    args.flag("AutoMapping")?;
    let entries = org.mailbox_permissions.entry(position).or_default();
    let entry = match entries
        .iter_mut()
        .find(|p| p.user.eq_ignore_ascii_case(&user))
    {
        Some(entry) => entry,
        None => {
            entries.push(MailboxPermission {
                user: user.clone(),
                access_rights: Vec::new(),
                inheritance_type: inheritance,
            });
            entries.last_mut().ok_or_else(|| missing("User"))?
        }
    };
    for right in &rights {
        if !entry.access_rights.contains(right) {
            entry.access_rights.push(right.clone());
        }
    }
    let added = MailboxPermission {
        user,
        access_rights: rights,
        inheritance_type: entry.inheritance_type.clone(),
    };
    let m = org
        .mailbox_at(position)
        .ok_or_else(|| not_found(&identity))?;
    Ok(Outcome::records(vec![permission_record(m, &added)]))
}

fn confirmed(args: &Args<'_>) -> Result<bool, Failure> {
    Ok(args.flag("Confirm")? == Some(false))
}

fn remove_mailbox_permission(org: &mut Organisation, args: &Args<'_>) -> Result<Outcome, Failure> {
    args.check(
        &[
            "Identity",
            "User",
            "AccessRights",
            "InheritanceType",
            "Deny",
            "BypassMasterAccountSid",
        ],
        true,
    )?;
    let identity = args.required_text("Identity")?;
    let position = resolve(org, &identity)?;
    let user = trustee(org, &args.required_text("User")?)?;
    let rights = rights(args, "AccessRights", MAILBOX_RIGHTS)?;
    if !confirmed(args)? {
        return Ok(Outcome::Confirmation(format!(
            "Are you sure you want to perform this action?\nRemoving mailbox permission \"{identity}\" for user \"{user}\" with access rights \"'{}'\".",
            rights.join("', '")
        )));
    }
    let name = org
        .mailbox_at(position)
        .map(|m| m.name.clone())
        .unwrap_or_default();
    let entries = org.mailbox_permissions.entry(position).or_default();
    let Some(entry) = entries
        .iter_mut()
        .find(|p| p.user.eq_ignore_ascii_case(&user))
    else {
        return Ok(Outcome::nothing(vec![format!(
            "Can't remove the access control entry on the object \"{name}\" for account \"{user}\" because the ACE doesn't exist on the object."
        )]));
    };
    entry.access_rights.retain(|r| !rights.contains(r));
    entries.retain(|p| !p.access_rights.is_empty());
    Ok(Outcome::nothing(Vec::new()))
}

fn set_cas_mailbox(org: &mut Organisation, args: &Args<'_>) -> Result<Outcome, Failure> {
    args.check(
        &[
            "Identity",
            "OWAEnabled",
            "ActiveSyncEnabled",
            "PopEnabled",
            "ImapEnabled",
            "MAPIEnabled",
            "EwsEnabled",
            "SmtpClientAuthenticationDisabled",
        ],
        true,
    )?;
    let identity = args.required_text("Identity")?;
    let (position, original) = target_mailbox(org, &identity)?;
    let original = original.clone();
    let mut m = original.clone();
    let c = &mut m.cas;
    for (name, slot) in [
        ("OWAEnabled", &mut c.owa_enabled),
        ("ActiveSyncEnabled", &mut c.active_sync_enabled),
        ("PopEnabled", &mut c.pop_enabled),
        ("ImapEnabled", &mut c.imap_enabled),
        ("MAPIEnabled", &mut c.mapi_enabled),
        ("EwsEnabled", &mut c.ews_enabled),
    ] {
        if let Some(b) = args.flag(name)? {
            *slot = b;
        }
    }
    if args.get("SmtpClientAuthenticationDisabled").is_some() {
        c.smtp_client_authentication_disabled = args.flag("SmtpClientAuthenticationDisabled")?;
    }
    if m == original {
        return Ok(Outcome::nothing(vec![no_change_warning(&m)]));
    }
    org.replace(position, m);
    Ok(Outcome::nothing(Vec::new()))
}

/// `Set-MailboxAutoReplyConfiguration`: the state must be one Exchange knows; messages and
/// audience are kept as given.
fn set_auto_reply(org: &mut Organisation, args: &Args<'_>) -> Result<Outcome, Failure> {
    args.check(
        &[
            "Identity",
            "AutoReplyState",
            "InternalMessage",
            "ExternalMessage",
            "ExternalAudience",
        ],
        true,
    )?;
    let identity = args.required_text("Identity")?;
    let (position, _) = target_mailbox(org, &identity)?;
    let mut reply = org.auto_replies.get(&position).cloned().unwrap_or_default();
    if let Some(state) = args.text("AutoReplyState")? {
        let known = ["Enabled", "Disabled", "Scheduled"];
        let Some(state) = known.iter().find(|k| k.eq_ignore_ascii_case(&state)) else {
            return Err(conversion(
                "AutoReplyState",
                &Value::String(state),
                "Microsoft.Exchange.Data.Storage.Management.OofState",
            ));
        };
        reply.state = (*state).to_string();
    }
    if let Some(text) = args.text("InternalMessage")? {
        reply.internal_message = Some(text);
    }
    if let Some(text) = args.text("ExternalMessage")? {
        reply.external_message = Some(text);
    }
    if let Some(text) = args.text("ExternalAudience")? {
        reply.external_audience = Some(text);
    }
    org.auto_replies.insert(position, reply);
    Ok(Outcome::nothing(Vec::new()))
}

fn get_accepted_domain(org: &Organisation, args: &Args<'_>) -> Result<Outcome, Failure> {
    args.check(&["Identity", "ResultSize"], false)?;
    let wanted = args.text("Identity")?;
    let records: Vec<Value> = org
        .accepted_domains
        .iter()
        .filter(|d| {
            wanted
                .as_ref()
                .is_none_or(|w| d.domain_name.eq_ignore_ascii_case(w))
        })
        .map(|d| {
            json!({
                "Identity": d.domain_name,
                "Name": d.domain_name,
                "DomainName": d.domain_name,
                "DomainType": "Authoritative",
                "Default": d.default,
                "InitialDomain": d.initial,
                "MatchSubDomains": false,
            })
        })
        .collect();
    if let Some(w) = wanted
        && records.is_empty()
    {
        return Err(not_found(&w));
    }
    Ok(Outcome::records(records))
}

const FOLDERS: &[&str] = &["Calendar", "Inbox", "Contacts", "Tasks"];
const FOLDER_ROLES: &[&str] = &[
    "None",
    "Owner",
    "PublishingEditor",
    "Editor",
    "PublishingAuthor",
    "Author",
    "NonEditingAuthor",
    "Reviewer",
    "Contributor",
    "AvailabilityOnly",
    "LimitedDetails",
    "CreateItems",
    "CreateSubfolders",
    "DeleteAllItems",
    "DeleteOwnedItems",
    "EditAllItems",
    "EditOwnedItems",
    "FolderContact",
    "FolderOwner",
    "FolderVisible",
    "ReadItems",
];

/// `mailbox:\Folder` → (mailbox position, canonical folder name).
fn folder(org: &Organisation, identity: &str) -> Result<(usize, &'static str), Failure> {
    let (mailbox, path) = identity.split_once(":\\").unwrap_or((identity, ""));
    let position = resolve(org, mailbox)?;
    let name = FOLDERS
        .iter()
        .find(|f| f.eq_ignore_ascii_case(path.trim_end_matches('\\')))
        .ok_or_else(|| {
            pipe(
                404,
                NOT_FOUND,
                format!(
                    "The operation couldn't be performed because '{identity}' couldn't be found."
                ),
            )
        })?;
    Ok((position, name))
}

fn default_folder_permissions(folder: &str) -> Vec<FolderPermission> {
    let default_rights = if folder == "Calendar" {
        "AvailabilityOnly"
    } else {
        "None"
    };
    vec![
        FolderPermission {
            user: "Default".into(),
            access_rights: vec![default_rights.into()],
            sharing_permission_flags: None,
        },
        FolderPermission {
            user: "Anonymous".into(),
            access_rights: vec!["None".into()],
            sharing_permission_flags: None,
        },
    ]
}

fn folder_record(m: &Mailbox, folder: &str, p: &FolderPermission) -> Value {
    json!({
        "Identity": format!("{}:\\{folder}", m.name),
        "FolderName": folder,
        "User": p.user,
        "AccessRights": p.access_rights,
        "SharingPermissionFlags": p.sharing_permission_flags,
        "IsValid": true,
        "ObjectState": "Unchanged",
    })
}

/// A folder trustee: `Default`, `Anonymous`, or a mailbox shown by display name.
fn folder_trustee(org: &Organisation, user: &str) -> Result<String, Failure> {
    if ["Default", "Anonymous"]
        .iter()
        .any(|s| s.eq_ignore_ascii_case(user))
    {
        let mut chars = user.chars();
        return Ok(chars
            .next()
            .map(|c| c.to_uppercase().collect::<String>() + &chars.as_str().to_ascii_lowercase())
            .unwrap_or_default());
    }
    let at = resolve(org, user)?;
    Ok(org
        .mailbox_at(at)
        .map(|m| m.display_name.clone())
        .unwrap_or_default())
}

fn get_folder_permission(org: &mut Organisation, args: &Args<'_>) -> Result<Outcome, Failure> {
    args.check(&["Identity", "User", "GroupMailbox"], false)?;
    let identity = args.required_text("Identity")?;
    let (position, name) = folder(org, &identity)?;
    let user = match args.text("User")? {
        Some(u) => Some(folder_trustee(org, &u)?),
        None => None,
    };
    let entries = org
        .folder_permissions
        .get(&(position, name.to_ascii_lowercase()))
        .cloned()
        .unwrap_or_else(|| default_folder_permissions(name));
    let m = org
        .mailbox_at(position)
        .ok_or_else(|| not_found(&identity))?;
    let records: Vec<Value> = entries
        .iter()
        .filter(|p| user.as_ref().is_none_or(|u| p.user.eq_ignore_ascii_case(u)))
        .map(|p| folder_record(m, name, p))
        .collect();
    if let Some(u) = user
        && records.is_empty()
    {
        return Err(pipe(
            404,
            "Microsoft.Exchange.Management.StoreTasks.UserNotFoundInPermissionEntryException",
            format!("There is no existing permission entry found for user: {u}."),
        ));
    }
    Ok(Outcome::records(records))
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Change {
    Add,
    Set,
    Remove,
}

fn change_folder_permission(
    org: &mut Organisation,
    args: &Args<'_>,
    change: Change,
) -> Result<Outcome, Failure> {
    let allowed: &[&str] = match change {
        Change::Remove => &["Identity", "User", "SendNotificationToUser"],
        _ => &[
            "Identity",
            "User",
            "AccessRights",
            "SharingPermissionFlags",
            "SendNotificationToUser",
        ],
    };
    args.check(allowed, true)?;
    let identity = args.required_text("Identity")?;
    let (position, name) = folder(org, &identity)?;
    let user = folder_trustee(org, &args.required_text("User")?)?;
    args.flag("SendNotificationToUser")?;
    let (rights, flags) = if change == Change::Remove {
        (Vec::new(), None)
    } else {
        let rights = rights(args, "AccessRights", FOLDER_ROLES)?;
        if name != "Calendar"
            && rights
                .iter()
                .any(|r| r == "AvailabilityOnly" || r == "LimitedDetails")
        {
            return Err(validation(
                "ErrorCalendarOnlyRights",
                format!(
                    "The access rights {} are valid only for calendar folders.",
                    rights.join(", ")
                ),
            ));
        }
        let flags = args.text("SharingPermissionFlags")?;
        if let Some(f) = &flags
            && !(name == "Calendar" && rights.iter().any(|r| r == "Editor"))
        {
            return Err(validation(
                "ErrorSharingPermissionFlagsRequireEditor",
                format!(
                    "SharingPermissionFlags {f} can be set only on a calendar folder with Editor access rights."
                ),
            ));
        }
        (rights, flags)
    };
    if change == Change::Remove && !confirmed(args)? {
        return Ok(Outcome::Confirmation(format!(
            "Are you sure you want to perform this action?\nRemoving mailbox folder permission on Identity:\"{identity}\" for user \"{user}\"."
        )));
    }
    let m = org
        .mailbox_at(position)
        .cloned()
        .ok_or_else(|| not_found(&identity))?;
    let entries = org
        .folder_permissions
        .entry((position, name.to_ascii_lowercase()))
        .or_insert_with(|| default_folder_permissions(name));
    let existing = entries
        .iter()
        .position(|p| p.user.eq_ignore_ascii_case(&user));
    let not_present = || {
        pipe(
            404,
            "Microsoft.Exchange.Management.StoreTasks.UserNotFoundInPermissionEntryException",
            format!("There is no existing permission entry found for user: {user}."),
        )
    };
    match (change, existing) {
        (Change::Add, Some(_)) => Err(pipe(
            500,
            "Microsoft.Exchange.Management.StoreTasks.UserAlreadyExistsInPermissionEntryException",
            format!("An existing permission entry was found for user: {user}."),
        )),
        (Change::Add, None) => {
            let entry = FolderPermission {
                user,
                access_rights: rights,
                sharing_permission_flags: flags,
            };
            let record = folder_record(&m, name, &entry);
            entries.push(entry);
            Ok(Outcome::records(vec![record]))
        }
        (Change::Set, Some(i)) => {
            entries[i].access_rights = rights;
            entries[i].sharing_permission_flags = flags;
            Ok(Outcome::nothing(Vec::new()))
        }
        (Change::Remove, Some(i)) => {
            entries.remove(i);
            Ok(Outcome::nothing(Vec::new()))
        }
        (Change::Set | Change::Remove, None) => Err(not_present()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(m) => m,
            _ => Map::new(),
        }
    }

    fn org() -> Organisation {
        Organisation::seeded("contoso", "t", 10, 3)
    }

    fn detail(failure: &Failure) -> String {
        failure.body["error"]["details"][0]["message"]
            .as_str()
            .unwrap_or("")
            .to_string()
    }

    #[test]
    fn binding_refuses_what_powershell_refuses() {
        let mut org = org();
        let table = [
            (
                json!({"Identity": "adele.vance", "Bogus": 1}),
                "matches parameter name 'Bogus'",
            ),
            (
                json!({"Identity": "adele.vance", "HiddenFromAddressListsEnabled": "true"}),
                "System.Boolean",
            ),
            (
                json!({"Identity": "adele.vance", "EmailAddresses": {"Add": "smtp:x@contoso.com"}}),
                "System.Collections.Hashtable",
            ),
            (
                json!({"Identity": "adele.vance", "GrantSendOnBehalfTo": [{"@odata.type": HASHTABLE, "Add": "sales"}]}),
                "System.Collections.Hashtable[]",
            ),
            (
                json!({"HiddenFromAddressListsEnabled": true}),
                "missing mandatory parameters: Identity",
            ),
            (
                json!({"Identity": "nobody"}),
                "ManagementObjectNotFoundException",
            ),
        ];
        for (p, needle) in table {
            let failure = run(&mut org, "Set-Mailbox", &params(p.clone())).unwrap_err();
            assert!(
                detail(&failure).contains(needle),
                "{p}: {}",
                detail(&failure)
            );
        }
        let failure = run(&mut org, "Get-Mailbox", &params(json!({"Confirm": false}))).unwrap_err();
        assert!(
            detail(&failure).contains("'Confirm'"),
            "reads have no -Confirm"
        );
        let failure = run(&mut org, "Get-Nothing", &Map::new()).unwrap_err();
        assert!(detail(&failure).contains("CommandNotFoundException"));
    }

    #[test]
    fn email_addresses_add_and_remove_through_a_hashtable() {
        let mut org = org();
        let p = params(
            json!({"Identity": "adele.vance", "Confirm": false, "EmailAddresses": {
            "@odata.type": HASHTABLE,
            "Add": ["smtp:av@contoso.com", "SMTP:adele@contoso.com"],
            "Remove": "smtp:adele.vance@contoso.onmicrosoft.com"}}),
        );
        run(&mut org, "Set-Mailbox", &p).unwrap();
        let m = &org.mailboxes()[0];
        assert_eq!(m.primary_smtp_address, "adele@contoso.com");
        assert_eq!(
            m.email_addresses,
            vec![
                "SMTP:adele@contoso.com",
                "smtp:adele.vance@contoso.com",
                "smtp:av@contoso.com"
            ]
        );
        let taken = params(
            json!({"Identity": "alex.wilber", "EmailAddresses": {"@odata.type": HASHTABLE, "Add": "av@contoso.com"}}),
        );
        let failure = run(&mut org, "Set-Mailbox", &taken).unwrap_err();
        assert!(detail(&failure).starts_with('{'), "the JSON details form");
        assert!(detail(&failure).contains("already being used"));
    }

    #[test]
    fn a_set_that_changes_nothing_warns() {
        let mut org = org();
        let p = params(json!({"Identity": "adele.vance", "HiddenFromAddressListsEnabled": false}));
        match run(&mut org, "Set-Mailbox", &p).unwrap() {
            Outcome::Records { warnings, .. } => assert!(warnings[0].contains("no settings")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn high_impact_removals_only_ask_without_confirm_false() {
        let mut org = org();
        let add = params(
            json!({"Identity": "sales", "User": "adele.vance", "AccessRights": ["FullAccess"]}),
        );
        run(&mut org, "Add-MailboxPermission", &add).unwrap();
        let remove = params(
            json!({"Identity": "sales", "User": "adele.vance", "AccessRights": "FullAccess"}),
        );
        assert!(matches!(
            run(&mut org, "Remove-MailboxPermission", &remove).unwrap(),
            Outcome::Confirmation(_)
        ));
        assert_eq!(org.mailbox_permissions[&2].len(), 1, "nothing removed");
        let mut confirmed = remove.clone();
        confirmed.insert("Confirm".into(), json!(false));
        run(&mut org, "Remove-MailboxPermission", &confirmed).unwrap();
        assert!(org.mailbox_permissions[&2].is_empty());
    }
}
