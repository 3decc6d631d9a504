// runbook-worker on Azure Container Apps.
//
// Creates, in the resource group it is deployed to:
//   - a user-assigned managed identity (the one Exchange Online will know the worker by; it
//     also pulls the image when `registryName` names a registry in this resource group),
//   - a Log Analytics workspace and a Container Apps environment that sends logs to it,
//   - a storage account with an Azure Files share `runbooks` (ops teams drop runbook files
//     there) mounted read-only at /runbooks,
//   - with replicas > 1, a blob container for coordination and the shared job history, and
//     the Storage Blob Data Contributor role for the identity on it, so each scheduled
//     occurrence runs once and every replica shows every job,
//   - the container app: probes on /healthz and /readyz, state on a per-replica EmptyDir
//     volume, the API token as a secret,
//   - with `alertEmail`, an action group that emails it and a log search alert rule on the
//     worker's `job_finished` log events with status Failed, TimedOut or Interrupted.
//
// Not done here: the Exchange permissions. Granting Exchange.ManageAsApp and a directory role
// are Microsoft Graph operations that need directory privileges a resource-group deployment
// does not have; run deploy/permissions/grant-exchange-permissions.sh with the principal id
// this template outputs (output `grantPermissionsCommand`).
//
//   az deployment group create -g RG -f deploy/container-apps/main.bicep \
//     -p @deploy/container-apps/main.parameters.example.json -p apiToken="$(openssl rand -hex 32)"

targetScope = 'resourceGroup'

@description('Name prefix of every resource (lower case letters, digits and hyphens).')
@minLength(3)
@maxLength(20)
param name string = 'runbook-worker'

@description('Azure region; defaults to the resource group\'s.')
param location string = resourceGroup().location

@description('Container image, e.g. myregistry.azurecr.io/runbook-worker:1.0.0 (see deploy/build-image.sh).')
param image string

@description('Name of an Azure Container Registry in this resource group that holds the image; the identity gets AcrPull on it and pulls with it. Empty for a public image.')
param registryName string = ''

@description('Exchange Online organization: the tenant\'s *.onmicrosoft.com domain. Empty: taken from the token\'s tenant id.')
param exchangeOrganization string = ''

@description('Number of replicas. 1: no coordination needed. 2 or more: replicas coordinate through Azure Blob leases so each scheduled occurrence runs once.')
@minValue(1)
@maxValue(5)
param replicas int = 1

@description('Bearer token that the API\'s changing routes (POST /api/runbooks/{name}/run, cancel) require. Generate one with: openssl rand -hex 32')
@secure()
@minLength(32)
param apiToken string

@description('Expose the HTTP API and dashboard outside the Container Apps environment. Off by default: the API can start Exchange admin jobs.')
param externalIngress bool = false

@description('Seconds between SIGTERM and SIGKILL when a replica stops. The worker lets running jobs finish for 5 s less than this (worker.shutdown_grace).')
@minValue(10)
@maxValue(600)
param terminationGracePeriodSeconds int = 30

@description('CPU cores per replica.')
param cpu string = '0.25'

@description('Memory per replica; must match the CPU (0.25 cores: 0.5Gi).')
param memory string = '0.5Gi'

@description('Days the Log Analytics workspace keeps logs.')
param logRetentionDays int = 30

@description('Email address told when a job fails, times out or is interrupted (an Azure Monitor action group and a log search alert rule on the worker\'s job_finished events). Empty: no alerting resources.')
param alertEmail string = ''

@description('How often the failed-jobs alert rule runs and the window it looks back over (ISO 8601 duration, 5 minutes to 1 day).')
param alertInterval string = 'PT15M'

var suffix = uniqueString(resourceGroup().id, name)
// Storage account names: 3-24 lower-case letters and digits, globally unique.
var storageAccountName = take('rw${replace(name, '-', '')}${suffix}', 24)
var runbooksShareName = 'runbooks'
var coordinationContainerName = 'runbook-worker-coordination'
var coordinated = replicas > 1
var storageBlobDataContributorRoleId = 'ba92f5b4-2d11-453d-a403-e96b0029c9fe'
var acrPullRoleId = '7f951dda-4ed3-4680-a7ca-43fe172d538d'
var usesRegistry = !empty(registryName)
var httpPort = 8080
var alerting = !empty(alertEmail)
// The worker logs one JSON line per finished job (`event` = job_finished, see README "Alerts
// in Azure Monitor and Prometheus"); Container Apps puts each line in Log_s.
var jobFailedQuery = 'ContainerAppConsoleLogs_CL | where Log_s has "job_finished" | extend e = parse_json(Log_s) | where tostring(e.event) == "job_finished" and tostring(e.status) in ("Failed", "TimedOut", "Interrupted") | extend runbook = tostring(e.runbook), status = tostring(e.status), job_id = tostring(e.job_id) | project TimeGenerated, runbook, status, job_id'

resource identity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: '${name}-identity'
  location: location
}

resource registry 'Microsoft.ContainerRegistry/registries@2023-07-01' existing = if (usesRegistry) {
  name: usesRegistry ? registryName : 'unused'
}

// The app pulls its image with the same identity, so no registry password is stored.
resource registryPull 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (usesRegistry) {
  name: guid(registry.id, identity.id, acrPullRoleId)
  scope: registry
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', acrPullRoleId)
    principalId: identity.properties.principalId
    principalType: 'ServicePrincipal'
  }
}

resource logs 'Microsoft.OperationalInsights/workspaces@2023-09-01' = {
  name: '${name}-logs'
  location: location
  properties: {
    sku: {
      name: 'PerGB2018'
    }
    retentionInDays: logRetentionDays
  }
}

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  name: storageAccountName
  location: location
  kind: 'StorageV2'
  sku: {
    name: 'Standard_LRS'
  }
  properties: {
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
    allowBlobPublicAccess: false
    // Container Apps mounts Azure Files (SMB) with the account key.
    allowSharedKeyAccess: true
  }
}

resource fileServices 'Microsoft.Storage/storageAccounts/fileServices@2023-05-01' = {
  parent: storage
  name: 'default'
}

resource runbooksShare 'Microsoft.Storage/storageAccounts/fileServices/shares@2023-05-01' = {
  parent: fileServices
  name: runbooksShareName
  properties: {
    shareQuota: 1
  }
}

resource blobServices 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' = if (coordinated) {
  parent: storage
  name: 'default'
}

resource coordinationContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = if (coordinated) {
  parent: blobServices
  name: coordinationContainerName
  properties: {
    publicAccess: 'None'
  }
}

// Only the coordination container, not the whole account: the identity needs nothing else.
resource coordinationRole 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (coordinated) {
  name: guid(coordinationContainer.id, identity.id, storageBlobDataContributorRoleId)
  scope: coordinationContainer
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageBlobDataContributorRoleId)
    principalId: identity.properties.principalId
    principalType: 'ServicePrincipal'
  }
}

resource appEnvironment 'Microsoft.App/managedEnvironments@2024-03-01' = {
  name: '${name}-env'
  location: location
  properties: {
    appLogsConfiguration: {
      destination: 'log-analytics'
      logAnalyticsConfiguration: {
        customerId: logs.properties.customerId
        sharedKey: logs.listKeys().primarySharedKey
      }
    }
  }
}

resource runbooksStorage 'Microsoft.App/managedEnvironments/storages@2024-03-01' = {
  parent: appEnvironment
  name: 'runbooks'
  properties: {
    azureFile: {
      accountName: storage.name
      accountKey: storage.listKeys().keys[0].value
      shareName: runbooksShare.name
      // The worker only reads runbooks; operators write them through the share.
      accessMode: 'ReadOnly'
    }
  }
}

var baseEnv = [
  {
    // A user-assigned identity must be named: the platform's endpoint cannot guess which.
    name: 'RUNBOOK_WORKER__IDENTITY__CLIENT_ID'
    value: identity.properties.clientId
  }
  {
    name: 'RUNBOOK_WORKER__RUNBOOKS__DIR'
    value: '/runbooks'
  }
  {
    name: 'RUNBOOK_WORKER__STATE__DIR'
    value: '/state'
  }
  {
    name: 'RUNBOOK_WORKER__HTTP__LISTEN'
    value: '0.0.0.0:${httpPort}'
  }
  {
    name: 'RUNBOOK_WORKER__HTTP__API_TOKEN'
    secretRef: 'api-token'
  }
  {
    name: 'RUNBOOK_WORKER__LOG__FORMAT'
    value: 'json'
  }
  {
    name: 'RUNBOOK_WORKER__WORKER__SHUTDOWN_GRACE'
    value: '${terminationGracePeriodSeconds - 5}s'
  }
]

var organizationEnv = empty(exchangeOrganization) ? [] : [
  {
    name: 'RUNBOOK_WORKER__EXCHANGE__ORGANIZATION'
    value: exchangeOrganization
  }
]

// With replicas > 1 the storage account holds, besides the `runbooks` share: the
// coordination blobs (occurrences/, locks/, status/) and the shared job history (history/:
// job records, streams and reports, pruned after history.retention) in one container. The
// worker picks the shared history whenever coordination.kind is azure-blob.
var coordinationEnv = coordinated ? [
  {
    name: 'RUNBOOK_WORKER__COORDINATION__KIND'
    value: 'azure-blob'
  }
  {
    // primaryEndpoints.blob ends with a slash.
    name: 'RUNBOOK_WORKER__COORDINATION__CONTAINER_URL'
    value: '${storage.properties.primaryEndpoints.blob}${coordinationContainerName}'
  }
] : [
  {
    name: 'RUNBOOK_WORKER__COORDINATION__KIND'
    value: 'local'
  }
]

resource app 'Microsoft.App/containerApps@2024-03-01' = {
  name: name
  location: location
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${identity.id}': {}
    }
  }
  dependsOn: [
    runbooksStorage
    coordinationRole
    registryPull
  ]
  properties: {
    managedEnvironmentId: appEnvironment.id
    configuration: {
      activeRevisionsMode: 'Single'
      secrets: [
        {
          name: 'api-token'
          value: apiToken
        }
      ]
      registries: usesRegistry ? [
        {
          server: registry.properties.loginServer
          identity: identity.id
        }
      ] : []
      ingress: {
        external: externalIngress
        targetPort: httpPort
        transport: 'auto'
        allowInsecure: false
      }
    }
    template: {
      terminationGracePeriodSeconds: terminationGracePeriodSeconds
      containers: [
        {
          name: 'runbook-worker'
          image: image
          resources: {
            cpu: json(cpu)
            memory: memory
          }
          env: concat(baseEnv, organizationEnv, coordinationEnv)
          probes: [
            {
              // Process alive. A failing liveness probe restarts the container.
              type: 'Liveness'
              httpGet: {
                path: '/healthz'
                port: httpPort
                scheme: 'HTTP'
              }
              initialDelaySeconds: 5
              periodSeconds: 10
              timeoutSeconds: 3
              failureThreshold: 3
            }
            {
              // Runbooks loaded, history open, identity usable; 503 while shutting down.
              type: 'Readiness'
              httpGet: {
                path: '/readyz'
                port: httpPort
                scheme: 'HTTP'
              }
              initialDelaySeconds: 2
              periodSeconds: 5
              timeoutSeconds: 3
              failureThreshold: 3
            }
          ]
          volumeMounts: [
            {
              volumeName: 'runbooks'
              mountPath: '/runbooks'
            }
            {
              volumeName: 'state'
              mountPath: '/state'
            }
          ]
        }
      ]
      scale: {
        minReplicas: replicas
        maxReplicas: replicas
      }
      volumes: [
        {
          name: 'runbooks'
          storageType: 'AzureFile'
          storageName: runbooksStorage.name
          // SMB shares otherwise show every file as mode 0777, which `doctor` rightly flags
          // (anyone who can write a runbook can run Exchange admin cmdlets). Writes go through
          // the share, not the container.
          mountOptions: 'dir_mode=0555,file_mode=0444,uid=0,gid=0'
        }
        {
          // Scratch state per replica: with replicas > 1 the job history (records, streams,
          // reports) lives in the blob container and survives any replica; with one replica
          // it is SQLite here, kept across container restarts but not across replica
          // replacement. SQLite's WAL needs a local file system, so it is not put on the SMB
          // share; see README "Several replicas" and "Deploy to Azure Container Apps".
          name: 'state'
          storageType: 'EmptyDir'
        }
      ]
    }
  }
}

resource alertActionGroup 'Microsoft.Insights/actionGroups@2023-01-01' = if (alerting) {
  name: '${name}-alerts'
  location: 'global'
  properties: {
    groupShortName: take(replace(name, '-', ''), 12)
    enabled: true
    emailReceivers: [
      {
        name: 'alert-email'
        emailAddress: alertEmail
        useCommonAlertSchema: true
      }
    ]
  }
}

resource jobFailedAlert 'Microsoft.Insights/scheduledQueryRules@2023-03-15-preview' = if (alerting) {
  name: '${name}-job-failed'
  location: location
  properties: {
    displayName: '${name}: a runbook job failed'
    description: 'A runbook-worker job ended Failed, TimedOut or Interrupted (job_finished log events in ContainerAppConsoleLogs_CL).'
    severity: 2
    enabled: true
    scopes: [
      logs.id
    ]
    evaluationFrequency: alertInterval
    windowSize: alertInterval
    criteria: {
      allOf: [
        {
          query: jobFailedQuery
          timeAggregation: 'Count'
          dimensions: [
            {
              name: 'runbook'
              operator: 'Include'
              values: [
                '*'
              ]
            }
          ]
          operator: 'GreaterThan'
          threshold: 0
          failingPeriods: {
            numberOfEvaluationPeriods: 1
            minFailingPeriodsToAlert: 1
          }
        }
      ]
    }
    autoMitigate: false
    actions: {
      actionGroups: [
        alertActionGroup.id
      ]
    }
  }
}

@description('Principal (object) id of the identity: what the permissions script needs.')
output principalId string = identity.properties.principalId

@description('Client id of the identity: what the worker is configured with.')
output clientId string = identity.properties.clientId

@description('The command that grants the Exchange permissions (run it as a Global or Privileged Role Administrator).')
output grantPermissionsCommand string = 'deploy/permissions/grant-exchange-permissions.sh --principal-id ${identity.properties.principalId}'

@description('Storage account holding the runbooks share.')
output storageAccountName string = storage.name

@description('Upload runbooks with: az storage file upload --account-name ACCOUNT --share-name runbooks --source FILE')
output runbooksShare string = runbooksShareName

@description('Internal or external host name of the app.')
output fqdn string = app.properties.configuration.ingress.fqdn
