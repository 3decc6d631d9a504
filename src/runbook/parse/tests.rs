use super::*;

const ISSUE_EXAMPLE: &str = r#"# runbooks/archive-for-user-mailboxes.toml
description = "Enable the online archive for user mailboxes that have none"
schedule = "0 30 2 * * *"        # cron; 5 fields, or 6 with seconds first; a list of them is allowed
timezone = "Europe/Berlin"       # IANA name, default UTC
timeout = "45m"                  # whole job
enabled = true
identity = { client_id = "…" }   # optional, overrides [identity] for this runbook
organization = "contoso.onmicrosoft.com"   # optional, overrides [exchange]
max_changes = 200                # optional blast-radius guard, see below

[[steps]]
name = "find"
cmdlet = "Get-Mailbox"
parameters = { RecipientTypeDetails = "UserMailbox", ResultSize = "Unlimited", Filter = "ArchiveStatus -eq 'None'" }

[[steps]]
name = "enable"
cmdlet = "Enable-Mailbox"
for_each = "find"                # once per record of step `find`, streamed as pages arrive
when = "item.LitigationHoldEnabled == false"   # optional filter expression
concurrency = 4
parameters = { Identity = "{{ item.ExternalDirectoryObjectId }}", Archive = true }
"#;

fn parse(text: &str) -> Result<Runbook, Vec<ValidationError>> {
    parse_runbook("x", "x.toml", text, &CmdletPolicy::default())
}

fn errors(text: &str) -> Vec<String> {
    match parse(text) {
        Ok(_) => Vec::new(),
        Err(errors) => errors.iter().map(|e| e.to_string()).collect(),
    }
}

const STEP: &str = "[[steps]]\nname = \"find\"\ncmdlet = \"Get-Mailbox\"\n";

fn with_step(head: &str) -> String {
    format!("{head}{STEP}")
}

#[test]
fn the_issue_example_parses_into_the_model() {
    let rb = parse(ISSUE_EXAMPLE).unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(rb.name, "x");
    assert_eq!(
        rb.description,
        "Enable the online archive for user mailboxes that have none"
    );
    assert_eq!(rb.schedules.len(), 1);
    assert_eq!(rb.schedules[0].expression, "0 30 2 * * *");
    assert_eq!(rb.timezone, chrono_tz::Europe::Berlin);
    let schedule = rb
        .schedule
        .as_ref()
        .expect("the scheduler's schedule is built");
    assert_eq!(schedule.expressions(), ["0 30 2 * * *"]);
    assert_eq!(schedule.time_zone(), chrono_tz::Europe::Berlin);
    assert_eq!(rb.timeout, Duration::from_secs(45 * 60));
    assert!(rb.enabled);
    assert_eq!(
        rb.identity,
        Some(IdentityOverride::ClientId("…".to_string()))
    );
    assert_eq!(rb.organization.as_deref(), Some("contoso.onmicrosoft.com"));
    assert_eq!(rb.max_changes, Some(200));
    assert_eq!(rb.retries, Retries::default());
    assert_eq!(rb.overlap, Overlap::Skip);
    assert_eq!(rb.missed, Missed::Skip);
    assert_eq!(rb.on_interrupt, OnInterrupt::Ignore);
    assert_eq!(rb.steps.len(), 2);
    let (find, enable) = (&rb.steps[0], &rb.steps[1]);
    assert_eq!(find.name, "find");
    assert_eq!(find.cmdlet, "Get-Mailbox");
    assert!(find.is_read());
    assert!(!find.has_templates());
    assert_eq!(
        find.parameter_names().collect::<Vec<_>>(),
        ["Filter", "RecipientTypeDetails", "ResultSize"]
    );
    assert_eq!(enable.for_each.as_deref(), Some("find"));
    assert_eq!(
        enable.when.as_deref(),
        Some("item.LitigationHoldEnabled == false")
    );
    assert_eq!(enable.concurrency, 4);
    assert!(!enable.continue_on_error);
    assert!(!enable.is_read());
    assert!(enable.has_templates());
    assert!(rb.has_writes());
    assert_eq!(rb.hash.len(), 64);
}

#[test]
fn good_files_parse() {
    let cases: Vec<(&str, String)> = vec![
        ("a step is enough", STEP.to_string()),
        ("five fields", with_step("schedule = \"30 2 * * *\"\n")),
        (
            "a list of schedules",
            with_step("schedule = [\"0 0 L * *\", \"0 9 * * 1#2\", \"@daily\"]\n"),
        ),
        (
            "every key",
            with_step(concat!(
                "description = \"d\"\nschedule = \"0 */5 * * * *\"\ntimezone = \"America/New_York\"\n",
                "timeout = \"1h 30m\"\nenabled = false\nidentity = { resource_id = \"/subscriptions/s/resourceGroups/g/providers/Microsoft.ManagedIdentity/userAssignedIdentities/i\" }\n",
                "organization = \"contoso.onmicrosoft.com\"\nmax_changes = 1_000\nretries = { attempts = 3, backoff = \"30s\" }\n",
                "overlap = \"queue\"\nmissed = \"run-once\"\nmax_lateness = \"6h\"\njitter = \"30s\"\n",
                "start_at = 2025-01-01T00:00:00\nend_at = 2030-01-01T00:00:00Z\non_interrupt = \"rerun\"\n",
                "[params]\ndepartment = \"Sales\"\nlimit = 5\nratio = 0.5\ndry = false\nwhen = 2025-01-01\nlist = [\"a\", \"b\"]\n",
                "table = { default = { Add = \"x\" }, description = \"hashtable\" }\n",
                "typed = { type = \"float\", default = 1 }\n",
            )),
        ),
        ("retries as a number", with_step("retries = 2\n")),
        (
            "rare but real days",
            with_step(
                "schedule = [\"0 0 29 2 *\", \"0 0 31 * *\", \"0 0 L 2 *\", \"0 0 * * 5#5\", \"0 0 30 2 1\", \"0 0 15W * *\", \"0 0 1 1 *\"]\n",
            ),
        ),
        ("hex and underscores", with_step("max_changes = 0x10\n")),
        (
            "output forms",
            format!(
                "{STEP}output = \"csv\"\n[[steps]]\nname = \"b\"\ncmdlet = \"Get-Mailbox\"\noutput = {{ format = \"jsonl\", columns = [\"A\", \"B\"] }}\n"
            ),
        ),
        (
            "required params without a schedule",
            with_step("[params]\ngroup = { type = \"string\", description = \"who\" }\n"),
        ),
        (
            "parameters as a table section",
            format!(
                "{STEP}[steps.parameters]\nIdentity = \"x\"\nEmailAddresses = {{ Add = \"smtp:x@y\", Remove = [\"a\", \"b\"] }}\n"
            ),
        ),
    ];
    for (what, text) in cases {
        if let Err(errors) = parse(&text) {
            panic!("{what}: {errors:#?}");
        }
    }
}

#[test]
fn every_key_lands_in_the_model() {
    let text = with_step(concat!(
        "schedule = [\"0 0 L * *\", \"0 9 * * 1#2\"]\ntimezone = \"Europe/Berlin\"\n",
        "max_changes = 0x10\nretries = { attempts = 3, backoff = \"30s\" }\n",
        "overlap = \"replace\"\nmissed = \"run-once\"\nmax_lateness = \"6h\"\njitter = \"30s\"\n",
        "start_at = 2025-01-01T00:00:00\nend_at = 2030-01-01T00:00:00+02:00\non_interrupt = \"rerun\"\n",
        "identity = { object_id = \"o\" }\n",
        "[params]\nlimit = 5\nday = 2025-06-01\nratio = { type = \"float\", default = 1 }\n",
    ));
    let rb = parse(&text).unwrap_or_else(|e| panic!("{e:#?}"));
    assert_eq!(rb.schedules.len(), 2);
    assert_eq!(rb.max_changes, Some(16));
    assert_eq!(
        rb.retries,
        Retries {
            attempts: 3,
            backoff: Duration::from_secs(30)
        }
    );
    assert_eq!(rb.overlap, Overlap::Replace);
    assert_eq!(rb.missed, Missed::RunOnce);
    assert_eq!(rb.max_lateness, Some(Duration::from_secs(6 * 3600)));
    assert_eq!(rb.jitter, Duration::from_secs(30));
    // Local datetimes are read in the runbook's zone (CET in winter, UTC+1).
    assert_eq!(
        rb.start_at.unwrap().to_rfc3339(),
        "2024-12-31T23:00:00+00:00"
    );
    assert_eq!(rb.end_at.unwrap().to_rfc3339(), "2029-12-31T22:00:00+00:00");
    assert_eq!(rb.on_interrupt, OnInterrupt::Rerun);
    assert_eq!(
        rb.identity,
        Some(IdentityOverride::ObjectId("o".to_string()))
    );
    assert_eq!(rb.params["limit"].kind, ParamType::Integer);
    assert_eq!(rb.params["limit"].default, Some(serde_json::json!(5)));
    // CEST in summer: midnight local is 22:00 UTC the day before.
    assert_eq!(
        rb.params["day"].default,
        Some(serde_json::json!("2025-05-31T22:00:00Z"))
    );
    assert_eq!(rb.params["day"].kind, ParamType::Datetime);
    assert_eq!(rb.params["ratio"].kind, ParamType::Float);
}

#[test]
fn bad_files_report_every_error_with_position_and_message() {
    let cases: Vec<(&str, String, Vec<&str>)> = vec![
        (
            "misspelt top-level key",
            with_step("schedul = \"0 * * * *\"\n"),
            vec![r#"x.toml:1:1: unknown key "schedul" (did you mean "schedule"?)"#],
        ),
        (
            "unknown top-level key without a close match",
            with_step("colour = 1\n"),
            vec![r#"x.toml:1:1: unknown key "colour" (expected one of: description, schedule, schedules, timezone, timeout, enabled, identity, organization, max_changes, retries, params, overlap, missed, max_lateness, jitter, start_at, end_at, on_interrupt, notify, steps)"#],
        ),
        (
            "misspelt step key",
            format!("{STEP}paramters = {{ Identity = \"x\" }}\n"),
            vec![r#"x.toml:4:1: unknown key "paramters" in step "find" (did you mean "parameters"?)"#],
        ),
        (
            "TOML syntax",
            with_step("description = \"unterminated\n"),
            vec![r#"x.toml:1:28: TOML syntax: invalid basic string, expected `"`"#],
        ),
        (
            "duplicate key",
            with_step("timeout = \"1m\"\ntimeout = \"2m\"\n"),
            vec![r#"x.toml:2:1: TOML syntax: duplicate key "timeout""#],
        ),
        (
            "no steps",
            "description = \"d\"\n".to_string(),
            vec![r#"x.toml:1:1: missing key "steps": a runbook needs at least one [[steps]] table"#],
        ),
        (
            "empty steps",
            "steps = []\n".to_string(),
            vec![r#"x.toml:1:9: "steps" is empty: a runbook needs at least one [[steps]] table"#],
        ),
        (
            "steps of the wrong type",
            "steps = \"find\"\n".to_string(),
            vec![r#"x.toml:1:9: "steps" must be an array of tables ([[steps]]), got a string"#],
        ),
        (
            "a step without name and cmdlet",
            "[[steps]]\nconcurrency = 2\n".to_string(),
            vec![
                r#"x.toml:1:1: missing key "name" in steps[0]"#,
                r#"x.toml:1:1: missing key "cmdlet" in steps[0] (or "graph" for a Microsoft Graph call)"#,
                r#"x.toml:2:15: "concurrency" in steps[0] only applies with for_each"#,
            ],
        ),
        (
            "identity typo",
            with_step("identity = { clientid = \"a\" }\n"),
            vec![
                r#"x.toml:1:12: "identity" needs one of client_id, object_id or resource_id"#,
                r#"x.toml:1:14: unknown key "clientid" in identity (did you mean "client_id"?)"#,
            ],
        ),
        (
            "two identities",
            with_step("identity = { client_id = \"a\", object_id = \"b\" }\n"),
            vec![r#"x.toml:1:31: set at most one of client_id, object_id, resource_id in identity (also set: client_id)"#],
        ),
        (
            "a resource id that is not one",
            with_step("identity = { resource_id = \"my-identity\" }\n"),
            vec![r#"x.toml:1:28: "resource_id" in identity must be an ARM id such as /subscriptions/…/resourceGroups/…/providers/Microsoft.ManagedIdentity/userAssignedIdentities/…, got "my-identity""#],
        ),
        (
            "identity not a table",
            with_step("identity = \"a\"\n"),
            vec![r#"x.toml:1:12: "identity" must be a table such as { client_id = "…" }, got a string"#],
        ),
        (
            "cron with seven fields, out of range, never firing, wrong type",
            with_step("schedule = [\"* * * * * * *\", \"61 * * * *\", \"0 0 30 2 *\", 5, \"0 0 31 4,6 *\"]\n"),
            vec![
                r#"x.toml:1:13: invalid cron schedule "* * * * * * *": 7 fields; expected 5 (minute hour day-of-month month day-of-week) or 6 (with seconds first)"#,
                r#"x.toml:1:30: invalid cron schedule "61 * * * *": Component error: Number out of bounds"#,
                r#"x.toml:1:44: cron schedule "0 0 30 2 *" never fires (no date matches it)"#,
                r#"x.toml:1:58: each entry of "schedule" must be a cron expression string, got an integer"#,
                r#"x.toml:1:61: cron schedule "0 0 31 4,6 *" never fires (no date matches it)"#,
            ],
        ),
        (
            "an empty schedule list",
            with_step("schedule = []\n"),
            vec![r#"x.toml:1:12: "schedule" is an empty list; remove it for a runbook that only runs on demand"#],
        ),
        (
            "a schedule of the wrong type",
            with_step("schedule = 5\n"),
            vec![r#"x.toml:1:12: "schedule" must be a cron expression string or a list of them, got an integer"#],
        ),
        (
            "unknown time zones",
            with_step("timezone = \"Europe/Berln\"\n"),
            vec![r#"x.toml:1:12: unknown time zone "Europe/Berln" (did you mean "Europe/Berlin"?); use an IANA name such as "Europe/Berlin" or "UTC""#],
        ),
        (
            "a city without its region",
            with_step("timezone = \"New York\"\n"),
            vec![r#"x.toml:1:12: unknown time zone "New York" (did you mean "America/New_York"?); use an IANA name such as "Europe/Berlin" or "UTC""#],
        ),
        (
            "a Windows time zone name",
            with_step("timezone = \"W. Europe Standard Time\"\n"),
            vec![r#"x.toml:1:12: unknown time zone "W. Europe Standard Time" (that is a Windows time zone name); use an IANA name such as "Europe/Berlin" or "UTC""#],
        ),
        (
            "a time zone in the wrong case",
            with_step("timezone = \"europe/berlin\"\n"),
            vec![r#"x.toml:1:12: unknown time zone "europe/berlin" (did you mean "Europe/Berlin"?); use an IANA name such as "Europe/Berlin" or "UTC""#],
        ),
        (
            "bad durations",
            with_step("timeout = \"soon\"\njitter = 30\nmissed = \"run-once\"\nmax_lateness = \"0x\"\n"),
            vec![
                r#"x.toml:1:11: "timeout" must be a duration such as "30s", "45m" or "1h 30m", got "soon""#,
                r#"x.toml:2:10: "jitter" must be a duration string such as "45m", got an integer"#,
                r#"x.toml:4:16: "max_lateness" must be a duration such as "30s", "45m" or "1h 30m", got "0x""#,
            ],
        ),
        (
            "a zero timeout and a long jitter",
            with_step("timeout = \"0s\"\njitter = \"2h\"\n"),
            vec![
                r#"x.toml:1:11: "timeout" must be longer than 0s"#,
                r#"x.toml:2:10: "jitter" must be at most 1h"#,
            ],
        ),
        (
            "max_lateness without run-once",
            with_step("max_lateness = \"1h\"\n"),
            vec![r#"x.toml:1:16: "max_lateness" only applies with missed = "run-once"; set that or remove max_lateness"#],
        ),
        (
            "wrong types at the top level",
            with_step("enabled = \"yes\"\ndescription = 5\nmax_changes = -1\norganization = \"contoso\"\n"),
            vec![
                r#"x.toml:1:11: "enabled" must be true or false, got a string"#,
                r#"x.toml:2:15: "description" must be a string, got an integer"#,
                r#"x.toml:3:15: "max_changes" must be an integer of at least 0, got -1"#,
                r#"x.toml:4:16: "organization" must be a domain such as contoso.onmicrosoft.com, got "contoso""#,
            ],
        ),
        (
            "bad choices",
            with_step("overlap = \"skp\"\nmissed = \"all\"\non_interrupt = \"rerun-always\"\n"),
            vec![
                r#"x.toml:1:11: "overlap" must be one of "skip", "queue", "replace", got "skp" (did you mean "skip"?)"#,
                r#"x.toml:2:10: "missed" must be one of "skip", "run-once", got "all""#,
                r#"x.toml:3:16: "on_interrupt" must be one of "ignore", "rerun", got "rerun-always" (did you mean "rerun"?)"#,
            ],
        ),
        (
            "bad notify lists",
            with_step("notify = \"ops\"\n"),
            vec![r#"x.toml:1:10: "notify" must be a list of target names such as ["ops-mail"], got a string"#],
        ),
        (
            "notify names a target twice or not at all",
            with_step("notify = [\"ops\", \"\", \"ops\"]\n"),
            vec![
                r#"x.toml:1:18: a notification target name must not be empty"#,
                r#"x.toml:1:22: notification target "ops" is listed twice"#,
            ],
        ),
        (
            "bad retries",
            with_step("retries = 11\n"),
            vec![r#"x.toml:1:11: "retries" must be an integer between 0 and 10, got 11"#],
        ),
        (
            "retries table problems",
            with_step("retries = { backof = \"1m\" }\n"),
            vec![
                r#"x.toml:1:11: missing key "attempts" in retries"#,
                r#"x.toml:1:13: unknown key "backof" in retries (did you mean "backoff"?)"#,
            ],
        ),
        (
            "dates in quotes and out of order",
            with_step("start_at = \"2025-01-01T00:00:00Z\"\nend_at = 2024-01-01T00:00:00Z\n"),
            vec![r#"x.toml:1:12: "start_at" must be a TOML datetime, got a string; remove the quotes: start_at = 2025-01-01T00:00:00Z"#],
        ),
        (
            "end before start",
            with_step("start_at = 2025-01-01T00:00:00Z\nend_at = 2024-01-01T00:00:00Z\n"),
            vec![r#"x.toml:2:10: "end_at" must be later than "start_at""#],
        ),
        (
            "a local time in a daylight-saving gap",
            with_step("timezone = \"Europe/Berlin\"\nstart_at = 2025-03-30T02:30:00\n"),
            vec![r#"x.toml:2:12: "start_at": 2025-03-30 02:30:00 does not exist in Europe/Berlin (it falls in a daylight-saving gap)"#],
        ),
        (
            "param problems",
            with_step(concat!(
                "schedule = \"0 * * * *\"\n[params]\n\"my-param\" = 1\nemails = { Add = \"x\" }\n",
                "count = { type = \"integer\", default = \"five\" }\nkind = { type = \"int\" }\nneeded = { description = \"no default\" }\n",
            )),
            vec![
                r#"x.toml:3:1: param name "my-param" must start with a letter or "_" and contain only letters, digits and "_" (templates use it as params.my-param)"#,
                r#"x.toml:4:12: unknown key "Add" in param "emails" (expected one of: default, description, type) (to give a table as the default, write emails = { default = { … } })"#,
                r#"x.toml:5:39: the default of param "count" must be of type integer, got a string"#,
                r#"x.toml:6:17: "type" in param "kind" must be one of "string", "integer", "float", "boolean", "datetime", "array", "table", got "int" (did you mean "integer"?)"#,
                r#"x.toml:7:1: param "needed" has no default, so a scheduled run cannot fill it; give it a default or remove "schedule""#,
            ],
        ),
        (
            "step names: invalid and duplicate",
            format!("{STEP}[[steps]]\nname = \"find\"\ncmdlet = \"Get-Mailbox\"\n[[steps]]\nname = \"find-all\"\ncmdlet = \"Get-Mailbox\"\n"),
            vec![
                r#"x.toml:5:8: duplicate step name "find" (first used on line 2); step names must be unique"#,
                r#"x.toml:8:8: step name "find-all" must start with a letter or "_" and contain only letters, digits and "_" (templates use it as steps.find-all)"#,
            ],
        ),
        (
            "cmdlet names",
            "[[steps]]\nname = \"a\"\ncmdlet = \"GetMailbox\"\n[[steps]]\nname = \"b\"\ncmdlet = \"{{ params.c }}\"\n[[steps]]\nname = \"c\"\ncmdlet = 5\n".to_string(),
            vec![
                r#"x.toml:3:10: "cmdlet" of step "a" must be a Verb-Noun cmdlet name such as "Get-Mailbox", got "GetMailbox""#,
                r#"x.toml:6:10: "cmdlet" of step "b" cannot be a template; name the cmdlet, such as "Get-Mailbox""#,
                r#"x.toml:9:10: "cmdlet" of step "c" must be a string, got an integer"#,
            ],
        ),
        (
            "the default policy refuses Remove- and New-",
            "[[steps]]\nname = \"a\"\ncmdlet = \"Remove-MailboxPermission\"\n[[steps]]\nname = \"b\"\ncmdlet = \"New-Mailbox\"\n".to_string(),
            vec![
                r#"x.toml:3:10: cmdlet "Remove-MailboxPermission" of step "a" is not allowed by the cmdlet policy: Remove- cmdlets need an entry in [policy] allow that starts with "Remove-", such as "Remove-*" or the cmdlet's full name"#,
                r#"x.toml:6:10: cmdlet "New-Mailbox" of step "b" is not allowed by the cmdlet policy: New- cmdlets need an entry in [policy] allow that starts with "New-", such as "New-*" or the cmdlet's full name"#,
            ],
        ),
        (
            "for_each naming a later, the same and an unknown step",
            format!(
                "{STEP}for_each = \"enable\"\n[[steps]]\nname = \"enable\"\ncmdlet = \"Set-Mailbox\"\nfor_each = \"enable\"\n[[steps]]\nname = \"last\"\ncmdlet = \"Set-Mailbox\"\nfor_each = \"fnd\"\n"
            ),
            vec![
                r#"x.toml:4:12: for_each of step "find" names step "enable", which comes later; for_each must name an earlier step"#,
                r#"x.toml:8:12: step "enable" cannot iterate over itself; for_each must name an earlier step"#,
                r#"x.toml:12:12: for_each of step "last" names an unknown step "fnd" (did you mean "find"?)"#,
            ],
        ),
        (
            "step value types and ranges",
            format!(
                "{STEP}concurrency = 0\ncontinue_on_error = \"yes\"\n[[steps]]\nname = \"b\"\ncmdlet = \"Set-Mailbox\"\nfor_each = \"find\"\nconcurrency = 33\nparameters = \"Identity\"\n"
            ),
            vec![
                r#"x.toml:4:15: "concurrency" in step "find" must be an integer between 1 and 32, got 0"#,
                r#"x.toml:5:21: "continue_on_error" in step "find" must be true or false, got a string"#,
                r#"x.toml:10:15: "concurrency" in step "b" must be an integer between 1 and 32, got 33"#,
                r#"x.toml:11:14: "parameters" in step "b" must be a table such as { Identity = "…" }, got a string"#,
            ],
        ),
        (
            "output problems",
            format!(
                "{STEP}output = \"xml\"\n[[steps]]\nname = \"b\"\ncmdlet = \"Get-Mailbox\"\noutput = {{ columns = [\"A\", \"A\"], fromat = \"csv\" }}\n"
            ),
            vec![
                r#"x.toml:4:10: "output" of step "find" must be one of "csv", "jsonl", got "xml""#,
                r#"x.toml:8:10: missing key "format" in output of step "b""#,
                r#"x.toml:8:34: unknown key "fromat" in output of step "b" (did you mean "format"?)"#,
            ],
        ),
        (
            "parameter names",
            format!("{STEP}parameters = {{ \"-Identity\" = \"x\", Filter = \"a\", filter = \"b\", At = 07:30:00, Bad = nan }}\n"),
            vec![
                r#"x.toml:4:16: parameter "-Identity" in step "find": write parameter names without the leading "-" ("Identity")"#,
                r#"x.toml:4:49: parameter "filter" in step "find" repeats "Filter" (PowerShell parameter names ignore case)"#,
                r#"x.toml:4:68: parameter "At" of step "find": a time of day without a date is not an instant"#,
                r#"x.toml:4:84: parameter "Bad" of step "find": nan and inf are not parameter values"#,
            ],
        ),
        (
            "template syntax",
            format!("{STEP}when = \"item.X ==\"\nparameters = {{ Identity = \"x {{{{ item.Alias \" }}\n"),
            vec![
                r#"x.toml:4:16: template error in "when" of step "find": unexpected end of input, expected expression"#,
                r#"x.toml:5:38: template error in parameter "Identity" of step "find": unexpected end of input, expected end of variable block"#,
            ],
        ),
        (
            "template references",
            format!(concat!(
                "[params]\ndomain = \"contoso.com\"\n{}",
                "parameters = {{ A = \"{{{{ item.Alias }}}}\", B = \"{{{{ params.domian }}}}\", C = \"{{{{ itme.X }}}}\" }}\n",
                "[[steps]]\nname = \"use\"\ncmdlet = \"Set-Mailbox\"\nfor_each = \"find\"\nwhen = \"steps.find\"\n",
                "parameters = {{ D = \"{{{{ steps.find.size }}}}\", E = \"{{{{ steps.later.count }}}}\", F = \"{{{{ job.scheduled }}}}\", G = \"{{{{ steps.use.count }}}}\", H = \"{{{{ steps.nope.count }}}}\", I = \"{{{{ now.day }}}}\", J = \"{{{{ steps }}}}\" }}\n",
                "[[steps]]\nname = \"later\"\ncmdlet = \"Get-Mailbox\"\n",
            ), STEP),
            vec![
                r#"x.toml:6:20: parameter "A" of step "find" uses "item", which only exists in steps with for_each; step "find" has no for_each"#,
                r#"x.toml:6:44: parameter "B" of step "find" uses undeclared param "domian" (did you mean "domain"?); declare it under [params]"#,
                r#"x.toml:6:71: parameter "C" of step "find" uses unknown variable "itme" (did you mean "item"?) (templates can use item, steps, params, job, now, vars, secrets)"#,
                r#"x.toml:11:8: "when" of step "use": use steps.find.count or steps.find.records, not steps.find alone"#,
                r#"x.toml:12:20: parameter "D" of step "use" uses unknown "steps.find.size" (a step has count and records)"#,
                r#"x.toml:12:49: parameter "E" of step "use" uses steps.later, which runs later; templates can only use earlier steps"#,
                r#"x.toml:12:80: parameter "F" of step "use" uses unknown "job.scheduled" (did you mean "scheduled_for"?) (job has id, runbook, scheduled_for)"#,
                r#"x.toml:12:107: parameter "G" of step "use" uses steps.use, its own results; templates can only use earlier steps"#,
                r#"x.toml:12:136: parameter "H" of step "use" uses unknown step "nope""#,
                r#"x.toml:12:166: parameter "I" of step "use": "now" is a string and has no attributes"#,
                r#"x.toml:12:187: parameter "J" of step "use": refer to a step's results as steps.<name>.count or steps.<name>.records"#,
            ],
        ),
    ];
    let mut failures = Vec::new();
    for (what, text, expected) in &cases {
        let got = errors(text);
        if &got != expected {
            failures.push(format!("{what}:\n  expected {expected:#?}\n  got {got:#?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn errors_carry_the_key_path_and_kind() {
    let text = format!(
        "{STEP}paramters = {{}}\n[[steps]]\nname = \"b\"\ncmdlet = \"Set-Mailbox\"\nfor_each = \"find\"\nparameters = {{ Identity = \"{{{{ itme.X }}}}\" }}\n"
    );
    let errors = parse(&text).unwrap_err();
    let summary: Vec<(&str, ErrorKind)> = errors.iter().map(|e| (e.key.as_str(), e.kind)).collect();
    assert_eq!(
        summary,
        [
            ("steps[0].paramters", ErrorKind::UnknownKey),
            ("steps[1].parameters.Identity", ErrorKind::Reference),
        ]
    );
    let json = serde_json::to_value(&errors[0]).unwrap();
    assert_eq!(
        json,
        serde_json::json!({
            "file": "x.toml", "line": 4, "column": 1, "key": "steps[0].paramters",
            "kind": "unknown-key",
            "message": "unknown key \"paramters\" in step \"find\" (did you mean \"parameters\"?)"
        })
    );
}

#[test]
fn a_param_without_default_is_required() {
    let rb = parse(&with_step(
        "[params]\ngroup = { type = \"string\", description = \"who\" }\n",
    ))
    .unwrap();
    assert_eq!(rb.params["group"].default, None);
    assert_eq!(rb.params["group"].description.as_deref(), Some("who"));
}

#[test]
fn an_invalid_runbook_name_is_reported_with_the_file() {
    let errors = parse_runbook(
        "my runbook",
        "my runbook.toml",
        STEP,
        &CmdletPolicy::default(),
    )
    .unwrap_err();
    assert_eq!(errors.len(), 1);
    assert_eq!(
        errors[0].to_string(),
        r#"my runbook.toml: runbook name "my runbook" (the file name without .toml) must start with a letter or digit and contain only letters, digits, "-", "_" and ".""#
    );
}

#[test]
fn an_explicit_allow_entry_admits_a_remove_cmdlet() {
    let text = "[[steps]]\nname = \"a\"\ncmdlet = \"Remove-MailboxPermission\"\n";
    let policy = CmdletPolicy::new(&crate::runbook::PolicySettings {
        allow: vec!["*".to_string(), "Remove-MailboxPermission".to_string()],
        deny: vec![],
    });
    assert!(parse_runbook("x", "x.toml", text, &policy).is_ok());
    let deny = CmdletPolicy::new(&crate::runbook::PolicySettings {
        allow: vec!["*".to_string()],
        deny: vec!["Get-*".to_string()],
    });
    let errors = parse_runbook("x", "x.toml", STEP, &deny).unwrap_err();
    assert_eq!(
        errors[0].message,
        r#"cmdlet "Get-Mailbox" of step "find" is not allowed by the cmdlet policy: it matches "Get-*" in [policy] deny"#
    );
}

#[test]
fn a_parsed_step_renders_its_parameters_for_a_record() {
    use crate::exchange::params::ParamValue;
    use crate::runbook::{JobInfo, TemplateContext};
    use chrono::TimeZone;

    let text = format!(
        "{ISSUE_EXAMPLE}output = \"csv\"\n[[steps]]\nname = \"alias\"\ncmdlet = \"Set-Mailbox\"\nfor_each = \"find\"\ncontinue_on_error = true\n{}",
        "parameters = { Identity = \"{{ item.Alias }}\", EmailAddresses = { Add = \"smtp:{{ item.Alias }}@contoso.com\" }, Sent = 2025-03-01T09:00:00, Note = \"{{ steps.find.count }} of {{ steps.enable.records | length }}\", ForwardingSmtpAddress = \"{{ none }}\" }\n"
    );
    let rb = parse(&text).unwrap_or_else(|e| panic!("{e:#?}"));
    assert_eq!(
        rb.steps_needing_records().into_iter().collect::<Vec<_>>(),
        ["enable"]
    );
    let alias = rb.step("alias").unwrap();
    assert!(alias.continue_on_error);
    assert_eq!(
        alias.step_references["find"],
        StepUsage {
            count: true,
            records: false
        }
    );
    assert_eq!(
        rb.steps[1].output,
        Some(OutputSpec {
            format: OutputFormat::Csv,
            columns: vec![]
        })
    );

    let job = JobInfo {
        id: "j".to_string(),
        runbook: "x".to_string(),
        scheduled_for: Utc.with_ymd_and_hms(2025, 1, 1, 0, 0, 0).unwrap(),
    };
    let ctx = TemplateContext::new(&job, &BTreeMap::new(), job.scheduled_for)
        .with_step("find", 2, None)
        .with_step("enable", 1, Some(&[serde_json::json!({"Identity": "a"})]));
    let record = serde_json::json!({
        "Alias": "bob\", \"Identity\": \"admin",
        "ExternalDirectoryObjectId": "0f6b…",
        "LitigationHoldEnabled": false,
    });
    let item_ctx = ctx.with_item(&record);

    let enable = rb.step("enable").unwrap();
    assert!(enable.matches_when(&item_ctx).unwrap());
    let rendered = enable.render_parameters(&item_ctx).unwrap();
    assert_eq!(
        rendered["Identity"],
        ParamValue::String("0f6b…".to_string())
    );
    assert_eq!(rendered["Archive"], ParamValue::Bool(true));

    let rendered = alias.render_parameters(&item_ctx).unwrap();
    assert_eq!(rendered.len(), 5);
    assert_eq!(
        rendered["Identity"],
        ParamValue::String("bob\", \"Identity\": \"admin".to_string())
    );
    assert_eq!(
        rendered["EmailAddresses"],
        ParamValue::HashTable(BTreeMap::from([(
            "Add".to_string(),
            ParamValue::String("smtp:bob\", \"Identity\": \"admin@contoso.com".to_string())
        )]))
    );
    // A local datetime is read in the runbook's zone (Europe/Berlin, CET in March).
    assert_eq!(
        rendered["Sent"],
        ParamValue::DateTime(Utc.with_ymd_and_hms(2025, 3, 1, 8, 0, 0).unwrap())
    );
    assert_eq!(rendered["Note"], ParamValue::String("2 of 1".to_string()));
    assert_eq!(rendered["ForwardingSmtpAddress"], ParamValue::Null);

    let without_hold = ctx.with_item(&serde_json::json!({"LitigationHoldEnabled": true}));
    assert!(!enable.matches_when(&without_hold).unwrap());
    let missing = ctx.with_item(&serde_json::json!({"Alias": "x"}));
    let err = enable.matches_when(&missing).unwrap_err().to_string();
    assert!(
        err.starts_with("when of step \"enable\": undefined value"),
        "{err}"
    );
    let err = enable.render_parameters(&missing).unwrap_err().to_string();
    assert!(
        err.starts_with("parameter \"Identity\" of step \"enable\": undefined value in `{{ item.ExternalDirectoryObjectId }}`"),
        "{err}"
    );
}

#[test]
fn a_template_in_an_opath_filter_must_be_quoted_by_opath() {
    let text = "[params]\nteam = \"x\"\n[[steps]]\nname = \"find\"\ncmdlet = \"Get-Mailbox\"\nparameters = { Filter = \"CustomAttribute1 -eq '{{ params.team }}'\" }\n";
    let found = parse(text).unwrap_err();
    assert_eq!(found.len(), 1, "{found:?}");
    let error = &found[0];
    assert_eq!(
        (error.key.as_str(), error.kind, error.line),
        ("steps[0].parameters.Filter", ErrorKind::Template, 6)
    );
    let shown = error.to_string();
    assert!(
        shown.starts_with("x.toml:6:")
            && shown.contains("parameter \"Filter\" of step \"find\"")
            && shown.contains("pipe it through `| opath`"),
        "{shown}"
    );
    // Any case of the name, and RecipientFilter too; quoted values pass.
    for (name, value, ok) in [
        ("filter", "Name -eq {{ params.team }}", false),
        ("RecipientFilter", "Department -eq {{ params.team }}", false),
        (
            "Filter",
            "CustomAttribute1 -eq {{ params.team | opath }}",
            true,
        ),
        ("Identity", "{{ params.team }}", true),
    ] {
        let text = format!(
            "[params]\nteam = \"x\"\n[[steps]]\nname = \"find\"\ncmdlet = \"Get-Mailbox\"\nparameters = {{ {name} = \"{value}\" }}\n"
        );
        assert_eq!(
            parse(&text).is_ok(),
            ok,
            "{name} = {value}: {:?}",
            errors(&text)
        );
    }
}

#[test]
fn schedules_tables_carry_their_own_cron_time_zone_and_params() {
    let rb = parse(&with_step(
        r#"
timezone = "Europe/Berlin"
[params]
region = { type = "string" }
limit = 10
ratio = 0.5
[[schedules]]
cron = "0 2 * * *"
params = { region = "EU", ratio = 2 }
[[schedules]]
cron = ["0 6 * * 1", "0 6 * * 4"]
timezone = "America/New_York"
params = { region = "US", limit = 3 }
"#,
    ))
    .unwrap_or_else(|e| panic!("{e:#?}"));
    assert_eq!(rb.schedule_entries.len(), 2);
    let (eu, us) = (&rb.schedule_entries[0], &rb.schedule_entries[1]);
    assert_eq!((eu.index, eu.label.as_str()), (0, "0 2 * * *"));
    assert_eq!(
        eu.timezone,
        chrono_tz::Europe::Berlin,
        "the runbook's zone by default"
    );
    assert_eq!(us.label, "0 6 * * 1, 0 6 * * 4");
    assert_eq!(us.timezone, chrono_tz::America::New_York);
    assert_eq!(rb.schedules.len(), 3, "every expression of every schedule");
    let params = rb.schedule_params(1).unwrap();
    assert_eq!(params["region"], serde_json::json!("US"));
    assert_eq!(params["limit"], serde_json::json!(3));
    assert_eq!(
        params["ratio"],
        serde_json::json!(0.5),
        "defaults fill the rest"
    );
    assert_eq!(
        rb.schedule_params(0).unwrap()["ratio"],
        serde_json::json!(2)
    );
}

#[test]
fn the_single_schedule_key_is_one_schedule_without_params() {
    let rb = parse(&with_step("schedule = [\"0 1 * * *\", \"0 13 * * *\"]\n")).unwrap();
    assert_eq!(rb.schedule_entries.len(), 1);
    assert_eq!(rb.schedule_entries[0].label, "0 1 * * *, 0 13 * * *");
    assert!(rb.schedule_entries[0].params.is_empty());
}

#[test]
fn bad_schedules_tables_are_named_with_their_key() {
    let cases: &[(&str, &str)] = &[
        (
            "schedule = \"0 1 * * *\"\n[[schedules]]\ncron = \"0 2 * * *\"\n",
            "x.toml has both \"schedule\" and \"[[schedules]]\"",
        ),
        (
            "[params]\nregion = \"ALL\"\n[[schedules]]\ncron = \"0 2 * * *\"\nparams = { regon = \"EU\" }\n",
            "schedules[0] gives param \"regon\", which [params] does not declare (did you mean \"region\"?)",
        ),
        (
            "[params]\nlimit = 5\n[[schedules]]\ncron = \"0 2 * * *\"\nparams = { limit = \"many\" }\n",
            "param \"limit\" of schedules[0] must be of type integer, got a string",
        ),
        (
            "[params]\nregion = { type = \"string\" }\n[[schedules]]\ncron = \"0 2 * * *\"\nparams = { region = \"EU\" }\n[[schedules]]\ncron = \"0 3 * * *\"\n",
            "param \"region\" has no default and schedules[1] does not give it",
        ),
        (
            "[[schedules]]\ntimezone = \"UTC\"\n",
            "schedules[0] has no \"cron\"",
        ),
        (
            "[[schedules]]\ncron = \"0 2 * *\"\n",
            "invalid cron schedule \"0 2 * *\": 4 fields",
        ),
        (
            "[[schedules]]\ncron = \"0 2 * * *\"\ntimezone = \"Berlin\"\n",
            "unknown time zone \"Berlin\"",
        ),
        (
            "[[schedules]]\ncron = \"0 2 * * *\"\nparms = {}\n",
            "unknown key \"parms\" in schedules[0] (did you mean \"params\"?)",
        ),
    ];
    for (head, expected) in cases {
        let errors = errors(&with_step(head));
        assert!(
            errors.iter().any(|e| e.contains(expected)),
            "{head}\nexpected {expected:?} in {errors:#?}"
        );
    }
}

#[test]
fn templates_may_read_vars_and_secrets_and_the_runbook_lists_which() {
    let rb = parse(&format!(
        "{STEP}parameters = {{ Identity = \"{{{{ vars.domain }}}}\", Filter = \"{{{{ vars.team | opath }}}}\", Notes = \"{{{{ secrets.api_key }}}}\" }}\n"
    ))
    .unwrap_or_else(|e| panic!("{e:#?}"));
    assert_eq!(rb.vars_used.iter().collect::<Vec<_>>(), ["domain", "team"]);
    assert_eq!(rb.secrets_used.iter().collect::<Vec<_>>(), ["api_key"]);
    let errors = errors(&format!(
        "{STEP}parameters = {{ Identity = \"{{{{ vars }}}}\" }}\n"
    ));
    assert!(
        errors
            .iter()
            .any(|e| e.contains("refer to one of them as vars.<name>")),
        "{errors:#?}"
    );
}

const GRAPH_JOIN: &str = r#"
[[steps]]
name = "disabled"
graph = "get /v1.0/users"
query = { "$filter" = "accountEnabled eq false", "$select" = "id,userPrincipalName", "$top" = 999 }
headers = { ConsistencyLevel = "eventual" }

[[steps]]
name = "mailboxes"
cmdlet = "Get-Mailbox"

[[steps]]
name = "licence"
graph = "POST /v1.0/users/{{ item.ExternalDirectoryObjectId }}/assignLicense"
for_each = "mailboxes"
when = "item.UserPrincipalName | lower in keys('disabled', \"userPrincipalName\")"
body = { addLicenses = [], removeLicenses = ["{{ params.sku }}"] }

[params]
sku = "05e9a617-0261-4cee-bb44-138d3ef5d965"
"#;

fn graph_context() -> crate::runbook::TemplateContext {
    use chrono::TimeZone;
    let job = crate::runbook::JobInfo {
        id: "j".to_string(),
        runbook: "x".to_string(),
        scheduled_for: Utc.with_ymd_and_hms(2025, 1, 1, 0, 0, 0).unwrap(),
    };
    let params = BTreeMap::from([(
        "sku".to_string(),
        serde_json::json!("05e9a617-0261-4cee-bb44-138d3ef5d965"),
    )]);
    crate::runbook::TemplateContext::new(&job, &params, job.scheduled_for)
}

#[test]
fn a_graph_step_parses_renders_and_joins_through_keys() {
    let rb = parse(GRAPH_JOIN).unwrap_or_else(|e| panic!("{e:#?}"));
    let disabled = rb.step("disabled").unwrap();
    assert_eq!(disabled.cmdlet, "GET /v1.0/users");
    assert!(disabled.is_read());
    let licence = rb.step("licence").unwrap();
    assert!(!licence.is_read(), "POST is a write");
    assert!(rb.has_writes());
    assert_eq!(
        rb.key_sets_needed(),
        BTreeMap::from([("disabled", BTreeSet::from(["userPrincipalName"]))])
    );
    assert!(licence.step_references.contains_key("disabled"));

    let call = disabled
        .render_graph(&graph_context())
        .expect("a Graph step")
        .unwrap();
    assert_eq!(call.label(), "GET /v1.0/users");
    assert!(
        call.query
            .contains(&("$top".to_string(), "999".to_string()))
    );
    assert_eq!(
        call.headers,
        [("ConsistencyLevel".to_string(), "eventual".to_string())]
    );

    let keys = std::collections::HashSet::from(["adele@contoso.com".to_string()]);
    let ctx = graph_context().with_keys("disabled", "userPrincipalName", keys);
    // A value holding "/", "?" or "#" stays inside its segment.
    let record = serde_json::json!({"UserPrincipalName": "Adele@Contoso.com", "ExternalDirectoryObjectId": "a/../b?c#d"});
    let item = ctx.with_item(&record);
    assert!(licence.matches_when(&item).unwrap());
    let call = licence.render_graph(&item).unwrap().unwrap();
    assert_eq!(call.path, "/v1.0/users/a%2F..%2Fb%3Fc%23d/assignLicense");
    assert_eq!(
        call.body,
        Some(
            serde_json::json!({"addLicenses": [], "removeLicenses": ["05e9a617-0261-4cee-bb44-138d3ef5d965"]})
        )
    );
    let other = ctx.with_item(&serde_json::json!({"UserPrincipalName": "bob@contoso.com", "ExternalDirectoryObjectId": ".."}));
    assert!(!licence.matches_when(&other).unwrap());
    let error = licence
        .render_graph(&other)
        .unwrap()
        .unwrap_err()
        .to_string();
    assert!(error.contains("path segment"), "{error}");
    // Without the collected keys, keys() is an error, not an empty set.
    let error = licence
        .matches_when(&graph_context().with_item(&record))
        .unwrap_err()
        .to_string();
    assert!(error.contains("keys"), "{error}");
}

#[test]
fn bad_graph_steps_name_the_file_step_and_key() {
    let step = |body: &str| format!("[[steps]]\nname = \"g\"\n{body}\n");
    let cases = [
        (
            step("cmdlet = \"Get-Mailbox\"\ngraph = \"GET /v1.0/users\""),
            "steps[0].cmdlet",
            "both \"cmdlet\" and \"graph\"",
        ),
        (
            step("graph = \"FETCH /v1.0/users\""),
            "steps[0].graph",
            "method \"FETCH\"",
        ),
        (
            step("graph = \"GET /v2/users\""),
            "steps[0].graph",
            "must start with /v1.0/ or /beta/",
        ),
        (
            step("graph = \"/v1.0/users\""),
            "steps[0].graph",
            "a method and a path",
        ),
        (
            step("graph = \"GET /v1.0/users?$top=5\""),
            "steps[0].graph",
            "query = {",
        ),
        (
            step("graph = \"GET /v1.0/users\"\nbody = { a = 1 }"),
            "steps[0].body",
            "takes no body",
        ),
        (
            step("graph = \"GET /v1.0/users\"\nparameters = { a = 1 }"),
            "steps[0].parameters",
            "a Graph step takes query",
        ),
        (
            step("cmdlet = \"Get-Mailbox\"\nquery = { a = \"1\" }"),
            "steps[0].query",
            "only applies to a Graph step",
        ),
        (
            step("graph = \"GET /v1.0/users\"\nheaders = { Authorization = \"Bearer x\" }"),
            "steps[0].headers.Authorization",
            "not a header a runbook may set",
        ),
        (
            step("graph = \"DELETE /v1.0/users/x\""),
            "steps[0].graph",
            "DELETE",
        ),
        (
            step("graph = \"GET /v1.0/users/{{ item.id }}\""),
            "steps[0].graph",
            "uses \"item\"",
        ),
        (
            format!(
                "{STEP}{}",
                "[[steps]]\nname = \"g\"\ncmdlet = \"Get-Mailbox\"\nwhen = \"'a' in keys(steps.find)\"\n"
            ),
            "steps[1].when",
            "two quoted strings",
        ),
        (
            format!(
                "{STEP}{}",
                "[[steps]]\nname = \"g\"\ncmdlet = \"Get-Mailbox\"\nwhen = \"'a' in keys('later', 'x')\"\n"
            ),
            "steps[1].when",
            "earlier step",
        ),
        (
            step("name2 = 1"),
            "steps[0]",
            "missing key \"cmdlet\" in step \"g\" (or \"graph\"",
        ),
    ];
    for (text, key, message) in cases {
        let errors = parse(&text).expect_err(&text);
        assert!(
            errors
                .iter()
                .any(|e| e.file == "x.toml" && e.key == key && e.to_string().contains(message)),
            "{text}\nexpected {key}: {message}\ngot {errors:#?}"
        );
    }
}
