//! The simulated Exchange organisation: mailboxes with realistic properties, their
//! permissions and calendar permissions, accepted domains and organisation settings.
//! Seeded deterministically (same seed, same organisation) to any size; lookups by
//! identity go through an index so a 100,000-mailbox organisation stays fast.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, NaiveDateTime, TimeZone, Utc};
use serde_json::{Map, Value, json};
use uuid::Uuid;

/// `RecipientTypeDetails` of the mailboxes the simulator knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RecipientTypeDetails {
    UserMailbox,
    SharedMailbox,
    RoomMailbox,
    EquipmentMailbox,
}

impl RecipientTypeDetails {
    pub const ALL: [RecipientTypeDetails; 4] = [
        RecipientTypeDetails::UserMailbox,
        RecipientTypeDetails::SharedMailbox,
        RecipientTypeDetails::RoomMailbox,
        RecipientTypeDetails::EquipmentMailbox,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RecipientTypeDetails::UserMailbox => "UserMailbox",
            RecipientTypeDetails::SharedMailbox => "SharedMailbox",
            RecipientTypeDetails::RoomMailbox => "RoomMailbox",
            RecipientTypeDetails::EquipmentMailbox => "EquipmentMailbox",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|t| t.as_str().eq_ignore_ascii_case(text.trim()))
    }

    /// `Set-Mailbox -Type` values.
    pub fn from_conversion_type(text: &str) -> Option<Self> {
        match text.trim().to_ascii_lowercase().as_str() {
            "regular" => Some(RecipientTypeDetails::UserMailbox),
            "shared" => Some(RecipientTypeDetails::SharedMailbox),
            "room" => Some(RecipientTypeDetails::RoomMailbox),
            "equipment" => Some(RecipientTypeDetails::EquipmentMailbox),
            _ => None,
        }
    }
}

/// A mailbox quota: `Unlimited` or a byte count, shown as Exchange shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Quota {
    Bytes(u64),
    Unlimited,
}

const GB: u64 = 1 << 30;

impl Quota {
    pub fn gb(n: u64) -> Self {
        Quota::Bytes(n * GB)
    }

    /// Parses what `Set-Mailbox` accepts: `Unlimited`, `49GB`, `49.5 GB`, `1073741824`,
    /// `500MB`, or Exchange's own `99 GB (106,300,440,576 bytes)`.
    pub fn parse(text: &str) -> Option<Self> {
        let text = text.trim();
        if text.eq_ignore_ascii_case("unlimited") {
            return Some(Quota::Unlimited);
        }
        if let (Some(open), Some(close)) = (text.find('('), text.find(" bytes)")) {
            let digits: String = text[open + 1..close]
                .chars()
                .filter(char::is_ascii_digit)
                .collect();
            return digits.parse().ok().map(Quota::Bytes);
        }
        let split = text
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(text.len());
        let number: f64 = text[..split].parse().ok()?;
        let multiplier = match text[split..].trim().to_ascii_uppercase().as_str() {
            "" | "B" => 1u64,
            "KB" => 1 << 10,
            "MB" => 1 << 20,
            "GB" => 1 << 30,
            "TB" => 1 << 40,
            _ => return None,
        };
        let bytes = number * multiplier as f64;
        (bytes.is_finite() && bytes >= 0.0).then(|| Quota::Bytes(bytes.round() as u64))
    }

    pub fn display(self) -> String {
        match self {
            Quota::Unlimited => "Unlimited".to_string(),
            Quota::Bytes(bytes) => format_size(bytes),
        }
    }
}

/// `1.5 GB (1,610,612,736 bytes)`, as `ByteQuantifiedSize` prints.
pub fn format_size(bytes: u64) -> String {
    let units = [
        ("TB", 1u64 << 40),
        ("GB", 1 << 30),
        ("MB", 1 << 20),
        ("KB", 1 << 10),
    ];
    let (unit, size) = units
        .iter()
        .find(|(_, size)| bytes >= *size)
        .copied()
        .unwrap_or(("B", 1));
    let value = format!("{:.3}", bytes as f64 / size as f64);
    let value = value.trim_end_matches('0').trim_end_matches('.');
    format!("{value} {unit} ({} bytes)", group_thousands(bytes))
}

fn group_thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Client access settings (`Get-CASMailbox`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CasSettings {
    pub owa_enabled: bool,
    pub active_sync_enabled: bool,
    pub pop_enabled: bool,
    pub imap_enabled: bool,
    pub mapi_enabled: bool,
    pub ews_enabled: bool,
    pub smtp_client_authentication_disabled: Option<bool>,
}

impl Default for CasSettings {
    fn default() -> Self {
        Self {
            owa_enabled: true,
            active_sync_enabled: true,
            pop_enabled: true,
            imap_enabled: true,
            mapi_enabled: true,
            ews_enabled: true,
            smtp_client_authentication_disabled: None,
        }
    }
}

/// Usage figures (`Get-MailboxStatistics`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Usage {
    pub item_count: u64,
    pub total_item_bytes: u64,
    pub deleted_item_count: u64,
    pub deleted_item_bytes: u64,
    pub last_logon_time: Option<DateTime<Utc>>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Archive {
    pub guid: Uuid,
    pub usage: Usage,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mailbox {
    pub guid: Uuid,
    pub exchange_guid: Uuid,
    pub external_directory_object_id: Uuid,
    pub name: String,
    pub alias: String,
    pub display_name: String,
    pub user_principal_name: String,
    pub primary_smtp_address: String,
    /// Proxy addresses, `SMTP:` for the primary, `smtp:` for the others.
    pub email_addresses: Vec<String>,
    pub recipient_type_details: RecipientTypeDetails,
    pub archive: Option<Archive>,
    pub auto_expanding_archive: bool,
    /// `smtp:someone@example.com`.
    pub forwarding_smtp_address: Option<String>,
    /// Name of an internal recipient.
    pub forwarding_address: Option<String>,
    pub deliver_to_mailbox_and_forward: bool,
    pub prohibit_send_quota: Quota,
    pub prohibit_send_receive_quota: Quota,
    pub issue_warning_quota: Quota,
    pub use_database_quota_defaults: bool,
    pub hidden_from_address_lists_enabled: bool,
    pub litigation_hold_enabled: bool,
    pub end_date_for_retention_hold: Option<NaiveDateTime>,
    pub custom_attribute1: Option<String>,
    pub grant_send_on_behalf_to: Vec<String>,
    pub audit_enabled: bool,
    pub account_disabled: bool,
    pub when_created: DateTime<Utc>,
    pub cas: CasSettings,
    pub usage: Usage,
}

impl Mailbox {
    /// A mailbox with defaults for its type, at `alias@domain`.
    pub fn new(
        display_name: &str,
        alias: &str,
        domain: &str,
        initial_domain: &str,
        kind: RecipientTypeDetails,
        ids: [Uuid; 3],
    ) -> Self {
        let primary = format!("{alias}@{domain}");
        let (send, receive, warn) = match kind {
            RecipientTypeDetails::UserMailbox => (99, 100, 98),
            _ => (49, 50, 48),
        };
        Self {
            guid: ids[0],
            exchange_guid: ids[1],
            external_directory_object_id: ids[2],
            name: alias.to_string(),
            alias: alias.to_string(),
            display_name: display_name.to_string(),
            user_principal_name: primary.clone(),
            email_addresses: vec![
                format!("SMTP:{primary}"),
                format!("smtp:{alias}@{initial_domain}"),
            ],
            primary_smtp_address: primary,
            recipient_type_details: kind,
            archive: None,
            auto_expanding_archive: false,
            forwarding_smtp_address: None,
            forwarding_address: None,
            deliver_to_mailbox_and_forward: false,
            prohibit_send_quota: Quota::gb(send),
            prohibit_send_receive_quota: Quota::gb(receive),
            issue_warning_quota: Quota::gb(warn),
            use_database_quota_defaults: false,
            hidden_from_address_lists_enabled: false,
            litigation_hold_enabled: false,
            end_date_for_retention_hold: None,
            custom_attribute1: None,
            grant_send_on_behalf_to: Vec::new(),
            audit_enabled: true,
            account_disabled: kind != RecipientTypeDetails::UserMailbox,
            when_created: Utc
                .with_ymd_and_hms(2020, 1, 1, 0, 0, 0)
                .single()
                .unwrap_or_default(),
            cas: CasSettings::default(),
            usage: Usage {
                item_count: 0,
                total_item_bytes: 0,
                deleted_item_count: 0,
                deleted_item_bytes: 0,
                last_logon_time: None,
            },
        }
    }

    /// The lower-case keys `-Identity` resolves through.
    pub fn identity_keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = [
            &self.name,
            &self.alias,
            &self.user_principal_name,
            &self.primary_smtp_address,
        ]
        .into_iter()
        .map(|s| s.to_ascii_lowercase())
        .collect();
        keys.extend(
            self.email_addresses
                .iter()
                .filter_map(|a| smtp_address(a))
                .map(|a| a.to_ascii_lowercase()),
        );
        keys.push(self.external_directory_object_id.to_string());
        keys.push(self.guid.to_string());
        keys.push(self.exchange_guid.to_string());
        let mut seen = HashSet::new();
        keys.retain(|k| seen.insert(k.clone()));
        keys
    }

    /// `Get-Mailbox` output, with the OData annotations the service adds.
    pub fn record(&self, org: &Organisation) -> Map<String, Value> {
        let archive_guid = self.archive.as_ref().map_or(Uuid::nil(), |a| a.guid);
        let quota_defaults = self.use_database_quota_defaults;
        let mut r = Map::new();
        let mut put = |k: &str, v: Value| {
            r.insert(k.to_string(), v);
        };
        put("Identity", json!(self.name));
        put("Id", json!(self.name));
        put("Name", json!(self.name));
        put("Alias", json!(self.alias));
        put("DisplayName", json!(self.display_name));
        put("UserPrincipalName", json!(self.user_principal_name));
        put("PrimarySmtpAddress", json!(self.primary_smtp_address));
        put("EmailAddresses@odata.type", json!("#Collection(String)"));
        put("EmailAddresses", json!(self.email_addresses));
        put(
            "ExternalDirectoryObjectId",
            json!(self.external_directory_object_id.to_string()),
        );
        put("Guid@odata.type", json!("#Guid"));
        put("Guid", json!(self.guid.to_string()));
        put("ExchangeGuid@odata.type", json!("#Guid"));
        put("ExchangeGuid@data.type", json!("System.Guid"));
        put("ExchangeGuid", json!(self.exchange_guid.to_string()));
        put("RecipientType", json!("UserMailbox"));
        put(
            "RecipientTypeDetails",
            json!(self.recipient_type_details.as_str()),
        );
        put(
            "ArchiveStatus",
            json!(if self.archive.is_some() {
                "Active"
            } else {
                "None"
            }),
        );
        put("ArchiveGuid@odata.type", json!("#Guid"));
        put("ArchiveGuid", json!(archive_guid.to_string()));
        put(
            "ArchiveName",
            json!(
                self.archive
                    .as_ref()
                    .map(|_| vec![format!("In-Place Archive -{}", self.display_name)])
                    .unwrap_or_default()
            ),
        );
        put(
            "AutoExpandingArchiveEnabled",
            json!(self.auto_expanding_archive),
        );
        put("ForwardingSmtpAddress", json!(self.forwarding_smtp_address));
        put("ForwardingAddress", json!(self.forwarding_address));
        put(
            "DeliverToMailboxAndForward",
            json!(self.deliver_to_mailbox_and_forward),
        );
        put("UseDatabaseQuotaDefaults", json!(quota_defaults));
        put(
            "ProhibitSendQuota",
            json!(self.prohibit_send_quota.display()),
        );
        put(
            "ProhibitSendReceiveQuota",
            json!(self.prohibit_send_receive_quota.display()),
        );
        put(
            "IssueWarningQuota",
            json!(self.issue_warning_quota.display()),
        );
        put(
            "HiddenFromAddressListsEnabled",
            json!(self.hidden_from_address_lists_enabled),
        );
        put("LitigationHoldEnabled", json!(self.litigation_hold_enabled));
        put(
            "EndDateForRetentionHold",
            json!(
                self.end_date_for_retention_hold
                    .map(|d| d.format("%Y-%m-%dT%H:%M:%S").to_string())
            ),
        );
        put("RetentionPolicy", json!("Default MRM Policy"));
        put(
            "CustomAttribute1",
            json!(self.custom_attribute1.clone().unwrap_or_default()),
        );
        put("GrantSendOnBehalfTo", json!(self.grant_send_on_behalf_to));
        put("AuditEnabled", json!(self.audit_enabled));
        put("IsMailboxEnabled", json!(true));
        put("AccountDisabled", json!(self.account_disabled));
        put("WhenCreated@odata.type", json!("#DateTimeOffset"));
        put("WhenCreated", json!(self.when_created.to_rfc3339()));
        put("WhenMailboxCreated", json!(self.when_created.to_rfc3339()));
        put("Database", json!(org.database_for(self)));
        put(
            "DistinguishedName",
            json!(format!(
                "CN={},OU={},OU=Microsoft Exchange Hosted Organizations,DC=EURPR01A001,DC=PROD,DC=OUTLOOK,DC=COM",
                self.name, org.initial_domain
            )),
        );
        put("OrganizationId", json!(org.initial_domain));
        put("ExchangeVersion", json!("0.20 (15.0.0.0)"));
        put("IsValid", json!(true));
        r
    }

    /// `Get-CASMailbox` output.
    pub fn cas_record(&self) -> Map<String, Value> {
        let c = &self.cas;
        let value = json!({
            "Identity": self.name,
            "Name": self.name,
            "DisplayName": self.display_name,
            "PrimarySmtpAddress": self.primary_smtp_address,
            "ExternalDirectoryObjectId": self.external_directory_object_id.to_string(),
            "Guid@odata.type": "#Guid",
            "Guid": self.guid.to_string(),
            "OWAEnabled": c.owa_enabled,
            "ActiveSyncEnabled": c.active_sync_enabled,
            "PopEnabled": c.pop_enabled,
            "ImapEnabled": c.imap_enabled,
            "MAPIEnabled": c.mapi_enabled,
            "EwsEnabled": c.ews_enabled,
            "ECPEnabled": true,
            "SmtpClientAuthenticationDisabled": c.smtp_client_authentication_disabled,
        });
        match value {
            Value::Object(map) => map,
            _ => Map::new(),
        }
    }
}

/// The address of an `smtp:`/`SMTP:` proxy address (`None` for X500 and others).
pub fn smtp_address(proxy: &str) -> Option<&str> {
    match proxy.split_once(':') {
        Some((prefix, address)) if prefix.eq_ignore_ascii_case("smtp") => Some(address),
        Some(_) => None,
        None => Some(proxy),
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MailboxPermission {
    /// The trustee's UPN.
    pub user: String,
    pub access_rights: Vec<String>,
    pub inheritance_type: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FolderPermission {
    /// `Default`, `Anonymous`, or the trustee's display name (as the service shows it).
    pub user: String,
    pub access_rights: Vec<String>,
    pub sharing_permission_flags: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AcceptedDomain {
    pub domain_name: String,
    pub default: bool,
    pub initial: bool,
}

/// Why `-Identity` did not resolve to one mailbox.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ResolveError {
    NotFound,
    Ambiguous,
}

/// The whole organisation.
#[derive(Debug)]
pub struct Organisation {
    /// `contoso`: the initial domain is `contoso.onmicrosoft.com`.
    pub name: String,
    pub tenant_id: String,
    pub guid: Uuid,
    pub domain: String,
    pub initial_domain: String,
    pub accepted_domains: Vec<AcceptedDomain>,
    mailboxes: Vec<Mailbox>,
    index: HashMap<String, Vec<u32>>,
    /// Explicit permissions by mailbox position (`NT AUTHORITY\SELF` is implied).
    pub mailbox_permissions: HashMap<usize, Vec<MailboxPermission>>,
    /// Folder permissions by (mailbox position, folder name in lower case).
    pub folder_permissions: HashMap<(usize, String), Vec<FolderPermission>>,
    /// Automatic replies by mailbox position (none: disabled, no messages).
    pub auto_replies: HashMap<usize, AutoReply>,
    pub smtp_client_authentication_disabled: bool,
}

/// A mailbox's `Set-MailboxAutoReplyConfiguration` state.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AutoReply {
    /// `Enabled`, `Disabled` or `Scheduled`.
    pub state: String,
    pub internal_message: Option<String>,
    pub external_message: Option<String>,
    /// `None`, `Known` or `All`.
    pub external_audience: Option<String>,
}

/// SplitMix64: a tiny deterministic generator, stable across crate versions.
#[derive(Clone, Debug)]
pub struct Seeded(u64);

impl Seeded {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next_u64() % n }
    }

    /// True with probability `percent` %.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    pub fn uuid(&mut self) -> Uuid {
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&self.next_u64().to_le_bytes());
        bytes[8..].copy_from_slice(&self.next_u64().to_le_bytes());
        uuid::Builder::from_random_bytes(bytes).into_uuid()
    }
}

const FIRST_NAMES: &[&str] = &[
    "Adele",
    "Alex",
    "Allan",
    "Diego",
    "Emily",
    "Grady",
    "Henrietta",
    "Isaiah",
    "Johanna",
    "Joni",
    "Lee",
    "Lidia",
    "Lynne",
    "Megan",
    "Miriam",
    "Nestor",
    "Patti",
    "Pradeep",
    "Aiko",
    "Bruno",
    "Chen",
    "Dana",
    "Farah",
    "Giulia",
    "Hugo",
    "Ingrid",
    "Jamal",
    "Kenji",
    "Lena",
    "Mateo",
    "Nadia",
    "Oskar",
    "Priya",
    "Rafael",
    "Sofia",
    "Tomas",
    "Uma",
    "Viktor",
    "Yara",
    "Zoe",
];
const LAST_NAMES: &[&str] = &[
    "Vance",
    "Wilber",
    "Deyoung",
    "Salazar",
    "Braun",
    "Archie",
    "Harris",
    "Langer",
    "Lauer",
    "Sherman",
    "Gu",
    "Holloway",
    "Robbins",
    "Bowen",
    "Graham",
    "Wilke",
    "Fernandez",
    "Gupta",
    "Tanaka",
    "Rossi",
    "Novak",
    "Okafor",
    "Schmidt",
    "Lindqvist",
    "Moreau",
    "Kowalski",
    "Haddad",
    "Silva",
    "Jensen",
    "Murphy",
    "Costa",
    "Yilmaz",
    "Ivanova",
    "Dubois",
    "Nakamura",
    "Berg",
    "Kim",
    "Olsen",
    "Reyes",
    "Weber",
];
const TEAMS: &[&str] = &[
    "Sales",
    "Support",
    "Finance",
    "Legal",
    "Marketing",
    "Recruiting",
    "Facilities",
    "Payroll",
    "Helpdesk",
    "Research",
];

impl Organisation {
    /// An empty organisation `name` (`contoso` → `contoso.com`, `contoso.onmicrosoft.com`).
    pub fn new(name: &str, tenant_id: &str) -> Self {
        let domain = format!("{name}.com");
        let initial_domain = format!("{name}.onmicrosoft.com");
        Self {
            name: name.to_string(),
            tenant_id: tenant_id.to_string(),
            guid: Seeded::new(name.len() as u64).uuid(),
            accepted_domains: vec![
                AcceptedDomain {
                    domain_name: domain.clone(),
                    default: true,
                    initial: false,
                },
                AcceptedDomain {
                    domain_name: initial_domain.clone(),
                    default: false,
                    initial: true,
                },
            ],
            domain,
            initial_domain,
            mailboxes: Vec::new(),
            index: HashMap::new(),
            mailbox_permissions: HashMap::new(),
            folder_permissions: HashMap::new(),
            auto_replies: HashMap::new(),
            smtp_client_authentication_disabled: true,
        }
    }

    /// `count` mailboxes from `seed`: the same inputs give the same organisation. The
    /// first four are fixed so tests can name them: `adele.vance` (user),
    /// `alex.wilber` (user with an archive), `sales` (shared), `room101` (room).
    pub fn seeded(name: &str, tenant_id: &str, count: usize, seed: u64) -> Self {
        let mut org = Self::new(name, tenant_id);
        let mut rng = Seeded::new(seed);
        let mut aliases: HashSet<String> = HashSet::with_capacity(count);
        org.mailboxes.reserve(count);
        let fixed: [(&str, &str, RecipientTypeDetails); 4] = [
            (
                "Adele Vance",
                "adele.vance",
                RecipientTypeDetails::UserMailbox,
            ),
            (
                "Alex Wilber",
                "alex.wilber",
                RecipientTypeDetails::UserMailbox,
            ),
            ("Sales", "sales", RecipientTypeDetails::SharedMailbox),
            ("Room 1.01", "room101", RecipientTypeDetails::RoomMailbox),
        ];
        for i in 0..count {
            let (display, alias, kind) = match fixed.get(i) {
                Some((display, alias, kind)) => (display.to_string(), alias.to_string(), *kind),
                None => random_identity(&mut rng, i),
            };
            let alias = if aliases.contains(&alias) {
                format!("{alias}{i}")
            } else {
                alias
            };
            aliases.insert(alias.clone());
            let ids = [rng.uuid(), rng.uuid(), rng.uuid()];
            let mut m = Mailbox::new(
                &display,
                &alias,
                &org.domain,
                &org.initial_domain,
                kind,
                ids,
            );
            decorate(&mut m, &mut rng, i);
            org.insert(m);
        }
        org
    }

    fn insert(&mut self, mailbox: Mailbox) -> usize {
        let position = self.mailboxes.len();
        for key in mailbox.identity_keys() {
            self.index.entry(key).or_default().push(position as u32);
        }
        self.mailboxes.push(mailbox);
        position
    }

    /// Adds a mailbox (tests); returns its position.
    pub fn add_mailbox(
        &mut self,
        display_name: &str,
        alias: &str,
        kind: RecipientTypeDetails,
    ) -> usize {
        let mut rng = Seeded::new(self.mailboxes.len() as u64 ^ 0xA5A5);
        let ids = [rng.uuid(), rng.uuid(), rng.uuid()];
        let m = Mailbox::new(
            display_name,
            alias,
            &self.domain,
            &self.initial_domain,
            kind,
            ids,
        );
        self.insert(m)
    }

    pub fn mailboxes(&self) -> &[Mailbox] {
        &self.mailboxes
    }

    pub fn mailbox_at(&self, position: usize) -> Option<&Mailbox> {
        self.mailboxes.get(position)
    }

    /// Replaces the mailbox at `position`, keeping the identity index right.
    pub fn replace(&mut self, position: usize, mailbox: Mailbox) {
        let Some(old) = self.mailboxes.get(position) else {
            return;
        };
        for key in old.identity_keys() {
            if let Some(list) = self.index.get_mut(&key) {
                list.retain(|p| *p as usize != position);
                if list.is_empty() {
                    self.index.remove(&key);
                }
            }
        }
        for key in mailbox.identity_keys() {
            self.index.entry(key).or_default().push(position as u32);
        }
        self.mailboxes[position] = mailbox;
    }

    /// Resolves `-Identity`: name, alias, UPN, any SMTP address, ExternalDirectoryObjectId
    /// or GUID, in any case.
    pub fn resolve(&self, identity: &str) -> Result<usize, ResolveError> {
        let key = identity.trim();
        let key = smtp_address(key).unwrap_or(key).to_ascii_lowercase();
        match self.index.get(&key).map(Vec::as_slice) {
            None | Some([]) => Err(ResolveError::NotFound),
            Some([one]) => Ok(*one as usize),
            Some(_) => Err(ResolveError::Ambiguous),
        }
    }

    /// Which mailbox (if any) owns an SMTP address.
    pub fn address_owner(&self, address: &str) -> Option<usize> {
        self.index
            .get(&address.to_ascii_lowercase())
            .and_then(|l| l.first())
            .map(|p| *p as usize)
    }

    pub fn is_accepted_domain(&self, domain: &str) -> bool {
        self.accepted_domains
            .iter()
            .any(|d| d.domain_name.eq_ignore_ascii_case(domain))
    }

    pub fn database_for(&self, mailbox: &Mailbox) -> String {
        format!(
            "EURPR01DG{:03}-db{:03}",
            mailbox.guid.as_bytes()[0],
            mailbox.guid.as_bytes()[1]
        )
    }

    /// `Get-OrganizationConfig` output.
    pub fn config_record(&self) -> Map<String, Value> {
        let value = json!({
            "Identity": self.initial_domain,
            "Name": self.initial_domain,
            "DisplayName": capitalise(&self.name),
            "Guid@odata.type": "#Guid",
            "Guid": self.guid.to_string(),
            "IsDehydrated": false,
            "OAuth2ClientProfileEnabled": true,
            "AuditDisabled": false,
            "SmtpClientAuthenticationDisabled": self.smtp_client_authentication_disabled,
            "MailTipsAllTipsEnabled": true,
            "CustomerLockboxEnabled": false,
            "AutoExpandingArchiveEnabled": false,
            "DefaultAuthenticationPolicy": null,
            "ExchangeVersion": "0.20 (15.0.0.0)",
            "WhenCreated": "2019-04-01T08:00:00+00:00",
        });
        match value {
            Value::Object(map) => map,
            _ => Map::new(),
        }
    }
}

fn capitalise(text: &str) -> String {
    let mut chars = text.chars();
    chars
        .next()
        .map(|c| c.to_uppercase().collect::<String>() + chars.as_str())
        .unwrap_or_default()
}

fn random_identity(rng: &mut Seeded, i: usize) -> (String, String, RecipientTypeDetails) {
    let roll = rng.below(100);
    if roll < 85 {
        let first = FIRST_NAMES[rng.below(FIRST_NAMES.len() as u64) as usize];
        let last = LAST_NAMES[rng.below(LAST_NAMES.len() as u64) as usize];
        (
            format!("{first} {last}"),
            format!(
                "{}.{}",
                first.to_ascii_lowercase(),
                last.to_ascii_lowercase()
            ),
            RecipientTypeDetails::UserMailbox,
        )
    } else if roll < 95 {
        let team = TEAMS[rng.below(TEAMS.len() as u64) as usize];
        (
            format!("{team} {i}"),
            format!("{}{i}", team.to_ascii_lowercase()),
            RecipientTypeDetails::SharedMailbox,
        )
    } else if roll < 98 {
        (
            format!("Room {}.{:02}", 1 + i % 9, i % 100),
            format!("room{i}"),
            RecipientTypeDetails::RoomMailbox,
        )
    } else {
        (
            format!("Projector {i}"),
            format!("projector{i}"),
            RecipientTypeDetails::EquipmentMailbox,
        )
    }
}

/// Realistic variety: archives, holds, forwarding, hidden shared mailboxes, usage.
fn decorate(m: &mut Mailbox, rng: &mut Seeded, i: usize) {
    let epoch = Utc
        .with_ymd_and_hms(2025, 6, 1, 0, 0, 0)
        .single()
        .unwrap_or_default();
    m.when_created = epoch - chrono::Duration::seconds(rng.below(5 * 365 * 86_400) as i64);
    let items = rng.below(150_000);
    m.usage = Usage {
        item_count: items,
        total_item_bytes: items * (20_000 + rng.below(120_000)),
        deleted_item_count: items / 20,
        deleted_item_bytes: items / 20 * 40_000,
        last_logon_time: (m.recipient_type_details == RecipientTypeDetails::UserMailbox)
            .then(|| epoch - chrono::Duration::seconds(rng.below(90 * 86_400) as i64)),
    };
    // The fixed mailboxes keep predictable settings; `alex.wilber` has an archive.
    if i < 4 {
        if i == 1 {
            m.archive = Some(Archive {
                guid: rng.uuid(),
                usage: Usage {
                    item_count: 12_000,
                    total_item_bytes: 3 * GB,
                    deleted_item_count: 10,
                    deleted_item_bytes: 1 << 20,
                    last_logon_time: None,
                },
            });
        }
        if i == 2 {
            m.hidden_from_address_lists_enabled = true;
        }
        return;
    }
    if m.recipient_type_details == RecipientTypeDetails::UserMailbox && rng.chance(30) {
        let items = rng.below(60_000);
        m.archive = Some(Archive {
            guid: rng.uuid(),
            usage: Usage {
                item_count: items,
                total_item_bytes: items * 60_000,
                deleted_item_count: 0,
                deleted_item_bytes: 0,
                last_logon_time: None,
            },
        });
    }
    if rng.chance(10) {
        m.litigation_hold_enabled = true;
    }
    if rng.chance(3) {
        m.forwarding_smtp_address = Some(format!("smtp:{}@fabrikam.example", m.alias));
        m.deliver_to_mailbox_and_forward = rng.chance(50);
    }
    if m.recipient_type_details != RecipientTypeDetails::UserMailbox && rng.chance(40) {
        m.hidden_from_address_lists_enabled = true;
    }
    if rng.chance(5) {
        m.cas.pop_enabled = false;
        m.cas.imap_enabled = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotas_parse_what_set_mailbox_accepts_and_print_as_exchange_does() {
        let table = [
            ("Unlimited", Some(Quota::Unlimited)),
            ("49GB", Some(Quota::gb(49))),
            ("49 GB", Some(Quota::gb(49))),
            ("1.5GB", Some(Quota::Bytes(1_610_612_736))),
            ("500MB", Some(Quota::Bytes(500 << 20))),
            ("1073741824", Some(Quota::gb(1))),
            ("99 GB (106,300,440,576 bytes)", Some(Quota::gb(99))),
            ("lots", None),
            ("5 PB", None),
        ];
        for (text, expected) in table {
            assert_eq!(Quota::parse(text), expected, "{text}");
        }
        assert_eq!(Quota::gb(99).display(), "99 GB (106,300,440,576 bytes)");
        assert_eq!(
            Quota::Bytes(1_610_612_736).display(),
            "1.5 GB (1,610,612,736 bytes)"
        );
        assert_eq!(format_size(512), "512 B (512 bytes)");
    }

    #[test]
    fn seeding_is_deterministic_and_identities_resolve_every_way() {
        let a = Organisation::seeded("contoso", "t", 300, 7);
        let b = Organisation::seeded("contoso", "t", 300, 7);
        assert_eq!(a.mailboxes(), b.mailboxes());
        let adele = &a.mailboxes()[0];
        for identity in [
            "adele.vance",
            "ADELE.VANCE@contoso.com",
            "smtp:adele.vance@contoso.onmicrosoft.com",
            &adele.external_directory_object_id.to_string(),
            &adele.guid.to_string(),
        ] {
            assert_eq!(a.resolve(identity), Ok(0), "{identity}");
        }
        assert_eq!(a.resolve("nobody@contoso.com"), Err(ResolveError::NotFound));
        let kinds: HashSet<_> = a
            .mailboxes()
            .iter()
            .map(|m| m.recipient_type_details)
            .collect();
        assert!(kinds.len() >= 3, "{kinds:?}");
        let aliases: HashSet<_> = a.mailboxes().iter().map(|m| m.alias.clone()).collect();
        assert_eq!(aliases.len(), 300, "aliases are unique");
    }

    #[test]
    fn replacing_a_mailbox_moves_its_index_entries() {
        let mut org = Organisation::seeded("contoso", "t", 5, 1);
        let mut m = org.mailboxes()[0].clone();
        m.email_addresses.push("smtp:av@contoso.com".into());
        m.email_addresses
            .retain(|a| !a.ends_with("onmicrosoft.com"));
        org.replace(0, m);
        assert_eq!(org.resolve("av@contoso.com"), Ok(0));
        assert_eq!(
            org.resolve("adele.vance@contoso.onmicrosoft.com"),
            Err(ResolveError::NotFound)
        );
    }
}
