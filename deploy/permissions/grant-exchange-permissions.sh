#!/usr/bin/env bash
# Gives a managed identity what Exchange Online app-only access needs, through Microsoft Graph
# with `az rest`: the Exchange.ManageAsApp app role on the tenant's "Office 365 Exchange
# Online" service principal, and an Entra directory role. Idempotent: what is already granted
# is left alone. `runbook-worker doctor` prints this script's command line with the ids filled
# in, so keep the options stable.
set -euo pipefail
shopt -s inherit_errexit

readonly GRAPH="https://graph.microsoft.com/v1.0"
# "Office 365 Exchange Online", the same appId in every tenant.
readonly EXCHANGE_APP_ID="00000002-0000-0ff1-ce00-000000000000"
# Its application role Exchange.ManageAsApp, the same id in every tenant.
readonly MANAGE_AS_APP_ROLE_ID="dc50a0fb-09a3-484d-be87-e023b12c6440"
# Directory role template ids; for built-in roles the role definition id is the template id.
readonly EXCHANGE_ADMINISTRATOR="29232cdf-9323-42fd-ade2-1d097af3e4de"
readonly EXCHANGE_RECIPIENT_ADMINISTRATOR="31392ffb-586c-42d1-9346-e59415a2cc4e"
readonly GLOBAL_READER="f2ef992c-3afb-46b9-b7cf-a126ee74c451"
# "Microsoft Graph", the same appId in every tenant.
readonly GRAPH_APP_ID="00000003-0000-0000-c000-000000000000"

readonly EXIT_FAILED=1
readonly EXIT_USAGE=2
readonly EXIT_EXCHANGE_MISSING=3
readonly EXIT_IDENTITY_NOT_FOUND=4
readonly EXIT_NO_AZ=5

usage() {
    cat <<'EOF'
Usage: grant-exchange-permissions.sh (--principal-id ID | --client-id ID) [--role ROLE] [--graph-role NAME]... [--dry-run]

Grants a managed identity what runbook-worker needs to run Exchange Online admin cmdlets:
  1. the Exchange.ManageAsApp application role (dc50a0fb-09a3-484d-be87-e023b12c6440) on the
     tenant's "Office 365 Exchange Online" service principal (appId
     00000002-0000-0ff1-ce00-000000000000), and
  2. an Entra directory role, assigned tenant-wide, and
  3. each Microsoft Graph application permission named with --graph-role, on the tenant's
     "Microsoft Graph" service principal (appId 00000003-0000-0000-c000-000000000000).
Each is created only when it is missing, so running the script again changes nothing.

Identify the managed identity by one of:
  --principal-id ID   object id of its service principal (also called principal id or
                      "Object ID" under Enterprise applications):
                        az identity show -g RG -n NAME --query principalId -o tsv      (user-assigned)
                        az vm identity show -g RG -n VM --query principalId -o tsv     (VM, system-assigned)
                        az containerapp identity show -g RG -n APP --query principalId -o tsv
                      The oid claim of its tokens is this id (`runbook-worker token` shows it).
  --client-id ID      client (application) id, the id the worker is configured with for a
                      user-assigned identity:
                        az identity show -g RG -n NAME --query clientId -o tsv
                      The script looks up the service principal that has this appId.

Options:
  --role ROLE   directory role to assign (default: "Exchange Administrator"):
                  "Exchange Administrator"            any Exchange Online task
                  "Exchange Recipient Administrator"  mailboxes, contacts, groups, permissions
                  "Global Reader"                     read-only runbooks (Get-*) only
                  none                                skip this step (you use Exchange RBAC role
                                                      groups instead)
  --graph-role NAME
                a Microsoft Graph application permission that runbooks with Graph steps
                need, such as User.Read.All; repeat for several. `runbook-worker
                permissions` prints the exact list for your runbooks. Known: User.Read.All,
                User.ReadWrite.All, Group.Read.All, GroupMember.Read.All, Directory.Read.All,
                Organization.Read.All, LicenseAssignment.ReadWrite.All, Mail.Send,
                AuditLog.Read.All, Application.Read.All
  --dry-run     read the current state (GET requests only) and print every change as the
                request it would send (method, URL, body); send nothing that changes anything
  -h, --help    show this help

Needs the Azure CLI, signed in to the identity's tenant (az login --tenant TENANT) as a
Global Administrator or Privileged Role Administrator (a dry run needs only read access).

Exit status: 0 done (or dry run done); 1 a Graph request failed; 2 bad arguments;
3 "Office 365 Exchange Online" is missing from the tenant; 4 no service principal with that
id; 5 the Azure CLI is missing or not signed in.
EOF
}

say() { printf '%s\n' "$*"; }
warn() { printf 'warning: %s\n' "$*" >&2; }
die() {
    local status=$1
    shift
    printf 'error: %s\n' "$*" >&2
    exit "$status"
}

is_guid() {
    [[ "$1" =~ ^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$ ]]
}

# --- arguments ----------------------------------------------------------------------------

principal_id=""
client_id=""
role_name="Exchange Administrator"
dry_run=false
graph_roles=()

while [[ $# -gt 0 ]]; do
    case "$1" in
        --principal-id | --object-id)
            [[ $# -ge 2 ]] || die $EXIT_USAGE "$1 needs a value (a GUID)"
            principal_id=$2
            shift 2
            ;;
        --client-id)
            [[ $# -ge 2 ]] || die $EXIT_USAGE "$1 needs a value (a GUID)"
            client_id=$2
            shift 2
            ;;
        --role)
            [[ $# -ge 2 ]] || die $EXIT_USAGE "$1 needs a value such as \"Exchange Administrator\""
            role_name=$2
            shift 2
            ;;
        --graph-role)
            [[ $# -ge 2 ]] || die $EXIT_USAGE "$1 needs a value such as User.Read.All"
            graph_roles+=("$2")
            shift 2
            ;;
        --dry-run)
            dry_run=true
            shift
            ;;
        -h | --help)
            usage
            exit 0
            ;;
        *)
            die $EXIT_USAGE "unknown argument '$1' (see --help)"
            ;;
    esac
done

if [[ -n "$principal_id" && -n "$client_id" ]]; then
    die $EXIT_USAGE "give either --principal-id or --client-id, not both"
fi
if [[ -z "$principal_id" && -z "$client_id" ]]; then
    die $EXIT_USAGE "say which managed identity: --principal-id ID or --client-id ID (see --help)"
fi
given_id="${principal_id:-$client_id}"
# The id ends up inside Graph URLs and filters: accept nothing but a GUID.
is_guid "$given_id" || die $EXIT_USAGE "'$given_id' is not a GUID such as 2f9a5b47-1c7e-4f61-9c1e-5a8e3b2d7c10"
given_id=${given_id,,}

case "${role_name,,}" in
    "exchange administrator" | exchange-administrator)
        role_name="Exchange Administrator" role_template_id=$EXCHANGE_ADMINISTRATOR
        ;;
    "exchange recipient administrator" | exchange-recipient-administrator)
        role_name="Exchange Recipient Administrator" role_template_id=$EXCHANGE_RECIPIENT_ADMINISTRATOR
        ;;
    "global reader" | global-reader)
        role_name="Global Reader" role_template_id=$GLOBAL_READER
        ;;
    none)
        role_name="" role_template_id=""
        ;;
    *)
        die $EXIT_USAGE "unknown role '$role_name': use \"Exchange Administrator\", \"Exchange Recipient Administrator\", \"Global Reader\" or none"
        ;;
esac

# The appRoleId of a Microsoft Graph application permission (the same in every tenant; the
# table is runbook-worker's src/graph/permissions.rs). Prints nothing for an unknown name.
graph_role_id() {
    case "${1,,}" in
        user.read.all) say "df021288-bdef-4463-88db-98f22de89214" ;;
        group.read.all) say "5b567255-7703-4780-807c-7be8301ae99b" ;;
        groupmember.read.all) say "98830695-27a2-44f7-8c18-0c3ebc9698f6" ;;
        directory.read.all) say "7ab1d382-f21e-4acd-a863-ba3e13f7da61" ;;
        mail.send) say "b633e1c5-b582-4048-a93e-9f11b44c7e96" ;;
        user.readwrite.all) say "741f803b-c850-494e-b5df-cde7c675a1ca" ;;
        organization.read.all) say "498476ce-e0fe-48b0-b801-37ba7e2685c6" ;;
        licenseassignment.readwrite.all) say "5facf0c1-8979-4e95-abcf-ff3d079771c0" ;;
        auditlog.read.all) say "b0afded3-3588-46d8-8b3d-9842eff778da" ;;
        application.read.all) say "9a5d68dd-52b0-4cc2-bd40-abcf44ac3a30" ;;
        *) ;;
    esac
}

graph_role_ids=()
for name in "${graph_roles[@]}"; do
    id=$(graph_role_id "$name")
    [[ -n "$id" ]] || die $EXIT_USAGE "unknown Graph application permission '$name' (see --help for the known ones)"
    graph_role_ids+=("$id")
done

# --- Graph helpers --------------------------------------------------------------------------

command -v az >/dev/null 2>&1 ||
    die $EXIT_NO_AZ "the Azure CLI (az) is not installed: see https://learn.microsoft.com/cli/azure/install-azure-cli"

# GET a Graph path and print the JMESPath `query` of the answer as TSV (empty when it selects
# nothing). A failed request stops the script with the request named.
graph_get() {
    local path=$1 query=$2 out
    if ! out=$(az rest --method get --url "$GRAPH/$path" --query "$query" --output tsv); then
        die $EXIT_FAILED "GET $GRAPH/$path failed (see the az error above); check that you are signed in to the right tenant with enough rights"
    fi
    printf '%s' "$out"
}

# POST a JSON body to a Graph path, or in a dry run print the request instead.
graph_post() {
    local path=$1 body=$2
    if [[ "$dry_run" == true ]]; then
        say "  dry run: would send"
        say "    POST $GRAPH/$path"
        say "    $body"
        return 0
    fi
    if ! az rest --method post --url "$GRAPH/$path" --headers "Content-Type=application/json" \
        --body "$body" --output none; then
        die $EXIT_FAILED "POST $GRAPH/$path failed (see the az error above); this step needs a Global Administrator or Privileged Role Administrator"
    fi
}

# Looks a service principal up by object id or by appId; prints "id<TAB>appId<TAB>type<TAB>name".
find_service_principal() {
    local field=$1 value=$2
    graph_get "servicePrincipals?\$filter=$field%20eq%20'$value'&\$select=id,appId,displayName,servicePrincipalType" \
        "value[0].[id,appId,servicePrincipalType,displayName]"
}

# --- 0. which tenant ------------------------------------------------------------------------

if ! tenant_id=$(az account show --query tenantId --output tsv 2>/dev/null) || [[ -z "$tenant_id" ]]; then
    die $EXIT_NO_AZ "the Azure CLI is not signed in: run az login --tenant TENANT (the managed identity's tenant) and try again"
fi
say "Tenant $tenant_id"
if [[ "$dry_run" == true ]]; then
    say "Dry run: reading only; changes are printed, not sent"
fi

# --- 1. the managed identity's service principal -------------------------------------------

if [[ -n "$principal_id" ]]; then
    sp=$(find_service_principal id "$given_id")
    if [[ -z "$sp" ]]; then
        sp=$(find_service_principal appId "$given_id")
        if [[ -n "$sp" ]]; then
            IFS=$'\t' read -r sp_id _ _ _ <<<"$sp"
            warn "$given_id is a client (application) id, not a principal id; its service principal's object id is $sp_id (using that)"
        fi
    fi
else
    sp=$(find_service_principal appId "$given_id")
    if [[ -z "$sp" ]]; then
        sp=$(find_service_principal id "$given_id")
        if [[ -n "$sp" ]]; then
            IFS=$'\t' read -r _ sp_app_id _ _ <<<"$sp"
            warn "$given_id is a principal (object) id, not a client id; its client id is $sp_app_id (using the principal it names)"
        fi
    fi
fi
if [[ -z "$sp" ]]; then
    die $EXIT_IDENTITY_NOT_FOUND "no service principal with id or appId $given_id in tenant $tenant_id: check the id (az identity show … --query principalId), that the identity exists (for a VM: az vm identity assign), and that you are signed in to its tenant"
fi
IFS=$'\t' read -r sp_id sp_app_id sp_type sp_name <<<"$sp"
say "Managed identity: $sp_name (principal id $sp_id, client id $sp_app_id)"
if [[ "$sp_type" != "ManagedIdentity" ]]; then
    warn "$sp_name is a service principal of type '$sp_type', not a managed identity; granting anyway"
fi

# --- 2. Office 365 Exchange Online ------------------------------------------------------------

exchange_sp_id=$(graph_get "servicePrincipals?\$filter=appId%20eq%20'$EXCHANGE_APP_ID'&\$select=id,displayName" "value[0].id")
if [[ -z "$exchange_sp_id" ]]; then
    cat >&2 <<EOF
error: the "Office 365 Exchange Online" service principal (appId $EXCHANGE_APP_ID) does not
exist in tenant $tenant_id, so its Exchange.ManageAsApp role cannot be granted yet.

Create the tenant's instance of that Microsoft application, then run this script again:

    az ad sp create --id $EXCHANGE_APP_ID

(PowerShell: New-MgServicePrincipal -AppId $EXCHANGE_APP_ID.) Or, as Microsoft's Exchange
app-only documentation describes: in an app registration's API permissions, "Add a permission"
→ "APIs my organization uses", search for $EXCHANGE_APP_ID; when it is not listed, add
  {"resourceAppId": "$EXCHANGE_APP_ID",
   "resourceAccess": [{"id": "$MANAGE_AS_APP_ROLE_ID", "type": "Role"}]}
to the app's manifest under requiredResourceAccess and grant admin consent. Tenants without
an Exchange Online licence have no Exchange Online to manage.
EOF
    exit $EXIT_EXCHANGE_MISSING
fi
say "Office 365 Exchange Online: service principal $exchange_sp_id"

# --- 3. the Exchange.ManageAsApp app role ---------------------------------------------------

granted=$(graph_get "servicePrincipals/$sp_id/appRoleAssignments" \
    "length(value[?appRoleId=='$MANAGE_AS_APP_ROLE_ID' && resourceId=='$exchange_sp_id'])")
if [[ "$granted" =~ ^[1-9] ]]; then
    say "Exchange.ManageAsApp: already granted"
else
    say "Exchange.ManageAsApp: granting"
    graph_post "servicePrincipals/$sp_id/appRoleAssignments" \
        "{\"principalId\":\"$sp_id\",\"resourceId\":\"$exchange_sp_id\",\"appRoleId\":\"$MANAGE_AS_APP_ROLE_ID\"}"
fi

# --- 4. the directory role ------------------------------------------------------------------

if [[ -z "$role_template_id" ]]; then
    say "Directory role: skipped (--role none); give the service principal an Exchange role group instead"
else
    assigned=$(graph_get "roleManagement/directory/roleAssignments?\$filter=principalId%20eq%20'$sp_id'" \
        "length(value[?roleDefinitionId=='$role_template_id' && directoryScopeId=='/'])")
    if [[ "$assigned" =~ ^[1-9] ]]; then
        say "$role_name: already assigned"
    else
        say "$role_name: assigning"
        graph_post "roleManagement/directory/roleAssignments" \
            "{\"principalId\":\"$sp_id\",\"roleDefinitionId\":\"$role_template_id\",\"directoryScopeId\":\"/\"}"
    fi
fi

# --- 5. Microsoft Graph application permissions -------------------------------------------

if [[ ${#graph_roles[@]} -gt 0 ]]; then
    graph_sp_id=$(graph_get "servicePrincipals?\$filter=appId%20eq%20'$GRAPH_APP_ID'&\$select=id,displayName" "value[0].id")
    [[ -n "$graph_sp_id" ]] ||
        die $EXIT_FAILED "the \"Microsoft Graph\" service principal (appId $GRAPH_APP_ID) is missing from tenant $tenant_id: create it with az ad sp create --id $GRAPH_APP_ID"
    for i in "${!graph_roles[@]}"; do
        name=${graph_roles[$i]} id=${graph_role_ids[$i]}
        granted=$(graph_get "servicePrincipals/$sp_id/appRoleAssignments" \
            "length(value[?appRoleId=='$id' && resourceId=='$graph_sp_id'])")
        if [[ "$granted" =~ ^[1-9] ]]; then
            say "Graph $name: already granted"
        else
            say "Graph $name: granting"
            graph_post "servicePrincipals/$sp_id/appRoleAssignments" \
                "{\"principalId\":\"$sp_id\",\"resourceId\":\"$graph_sp_id\",\"appRoleId\":\"$id\"}"
        fi
    done
fi

# --- what comes next ------------------------------------------------------------------------

cat <<EOF

Next:
  - Managed-identity tokens are cached by Azure for up to about 24 hours: a new role can take
    hours to reach the worker's tokens, and there is no way to force a refresh. Check with
    'runbook-worker doctor' (or 'runbook-worker token') on the worker's host.
  - A user-assigned identity must be named in the worker's settings by its client id:
    RUNBOOK_WORKER__IDENTITY__CLIENT_ID=$sp_app_id
  - If Exchange still answers "UnAuthorized" once the roles show in the token, register the
    service principal in Exchange Online (Connect-ExchangeOnline as an admin, then):
    New-ServicePrincipal -AppId $sp_app_id -ObjectId $sp_id -DisplayName "$sp_name"
EOF
