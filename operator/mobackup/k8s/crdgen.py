"""The CustomResourceDefinitions of mobackup.io, built in Python and written to `crds/*.yaml`.

Why generated: the MOBackup spec schema is reused inside MOBackupSchedule's template, and shared
pieces (Secret references, Job overrides, status conditions) must not drift between kinds.
`python -m mobackup.k8s.crdgen crds/` rewrites the files; a unit test fails when they are stale.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Any

import yaml

GROUP = "mobackup.io"
VERSION = "v1alpha1"
# Not "mobackup": kubectl expands a category before resource names, so a category equal to MOBackup's
# singular name made `kubectl get mobackup NAME` list all four kinds ("you must specify only one resource").
CATEGORY = "matrixone-backup"

Schema = dict[str, Any]

DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
SECRET_KEY = r"^[-._a-zA-Z0-9]+$"
BACKUP_ID = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
# A relative path inside a volume: no leading '/', no '..' component.
REL_PATH = r"^(\.|([^/.][^/]*|\.[^/.][^/]*|\.\.[^/]+)(/([^/.][^/]*|\.[^/.][^/]*|\.\.[^/]+))*)$"
# Bytes per second as a Kubernetes-style quantity: 50Mi, 10M, 1048576.
QUANTITY = r"^[0-9]+(\.[0-9]+)?(k|Ki|M|Mi|G|Gi|T|Ti)?$"
DURATION = r"^([0-9]+(s|m|h|d|w))+$"


def s(description: str, type_: str = "string", **extra: Any) -> Schema:
    """A described leaf schema."""
    out: Schema = {"type": type_, "description": description}
    out.update(extra)
    return out


def obj(description: str, properties: dict[str, Schema], required: list[str] | None = None,
        **extra: Any) -> Schema:
    out: Schema = {"type": "object", "description": description, "properties": properties}
    if required:
        out["required"] = required
    out.update(extra)
    return out


def free_object(description: str) -> Schema:
    """A Kubernetes core type passed through to the Job as is (validated by the API server there)."""
    return {"type": "object", "description": description, "x-kubernetes-preserve-unknown-fields": True}


def name_ref(description: str) -> Schema:
    return obj(description, {"name": s("Name of the object, in the same namespace.", pattern=DNS_SUBDOMAIN,
                                       maxLength=253)}, ["name"])


OPTED_IN = ("; the Secret must carry the label mobackup.io/credentials=true (its owner's consent to its use "
            "by mobackup), else the run fails, or the storage is Unavailable, with reason SecretNotOptedIn")


def secret_key_ref(description: str, default_key: str, kind: str = "Secret") -> Schema:
    return obj(description, {
        "name": s(f"Name of the {kind}, in the same namespace{OPTED_IN if kind == 'Secret' else ''}.",
                  pattern=DNS_SUBDOMAIN, maxLength=253),
        "key": s(f"Key inside the {kind}.", pattern=SECRET_KEY, default=default_key),
    }, ["name"])


def workload_ref(description: str) -> Schema:
    return obj(description, {
        "kind": s("Kind of the workload that runs MatrixOne on the volume.",
                  enum=["StatefulSet", "Deployment"], default="StatefulSet"),
        "name": s("Name of the workload, in the same namespace.", pattern=DNS_SUBDOMAIN, maxLength=253),
    }, ["name"])


def pvc_ref(description: str, path_default: str, path_desc: str) -> Schema:
    return obj(description, {
        "claimName": s("Name of the PersistentVolumeClaim, in the same namespace.", pattern=DNS_SUBDOMAIN,
                       maxLength=253),
        "path": s(path_desc, pattern=REL_PATH, default=path_default, maxLength=1024),
    }, ["claimName"])


def sql_endpoint(description: str) -> Schema:
    return obj(description, {
        "host": s("Host name or Service of the MatrixOne SQL endpoint (MySQL protocol).", minLength=1,
                  maxLength=253),
        "port": s("SQL port.", "integer", default=6001, minimum=1, maximum=65535),
        "user": s("SQL user.", default="dump", minLength=1, maxLength=64),
        "database": s("Database to connect to (optional; MatrixOne needs none).", maxLength=64),
        "passwordSecretRef": secret_key_ref("Secret holding the SQL password (read by the operator only; "
                                            "never written to status, Events or logs).", "password"),
    }, ["host", "passwordSecretRef"])


def s3_keys_ref(description: str) -> Schema:
    return obj(description, {
        "name": s(f"Name of the Secret, in the same namespace{OPTED_IN}.", pattern=DNS_SUBDOMAIN),
        "accessKeyIDKey": s("Key of the access key ID.", default="AWS_ACCESS_KEY_ID", pattern=SECRET_KEY),
        "secretAccessKeyKey": s("Key of the secret access key.", default="AWS_SECRET_ACCESS_KEY", pattern=SECRET_KEY),
    }, ["name"])


def job_overrides() -> Schema:
    return obj("Overrides of the pod of the Job that does the copy (the agent).", {
        "image": s("Image of the agent (default: the operator's agent image). Refused (Failed, reason "
                   "JobOverrideNotAllowed) unless the operator's allow-list (chart value "
                   "jobOverrides.allowedImages) matches it."),
        "imagePullPolicy": s("Pull policy of the agent image.", enum=["Always", "IfNotPresent", "Never"]),
        "imagePullSecrets": {"type": "array", "description": "Secrets for pulling the agent image.",
                             "items": name_ref("A pull Secret.")},
        "resources": free_object("Resource requests and limits of the agent container "
                                 "(core/v1 ResourceRequirements)."),
        "nodeSelector": {"type": "object", "description": "Node selector of the agent pod. Control-plane role labels "
                         "(node-role.kubernetes.io/control-plane, /master) are refused (JobOverrideNotAllowed).",
                         "additionalProperties": {"type": "string"}},
        "tolerations": {"type": "array", "description": "Tolerations of the agent pod (core/v1 Toleration). A "
                        "toleration of the control-plane taints, or of every taint (no key, operator Exists), is "
                        "refused (JobOverrideNotAllowed).",
                        "items": free_object("A toleration.")},
        "affinity": free_object("Affinity of the agent pod (core/v1 Affinity). Node affinity terms that "
                                "select control-plane nodes (In/Exists on their role labels) are refused."),
        "securityContext": free_object("Pod security context (core/v1 PodSecurityContext), merged onto the "
                                       "defaults (runAsNonRoot, uid/gid 65532, seccomp RuntimeDefault). "
                                       "runAsUser 0, runAsNonRoot false, group 0 (runAsGroup, fsGroup, "
                                       "supplementalGroups), an Unconfined seccomp or AppArmor profile, SELinux "
                                       "options beyond a container_* type, or sysctls fail the run "
                                       "(JobOverrideNotAllowed): the pod stays within Pod Security restricted."),
        "containerSecurityContext": free_object("Container security context (core/v1 SecurityContext), merged "
                                                "onto the defaults (non-root, read-only root file system, "
                                                "allowPrivilegeEscalation false, capabilities drop ALL, seccomp "
                                                "RuntimeDefault); weakening any of them, group 0, an Unconfined "
                                                "AppArmor profile or SELinux options beyond a container_* type fail "
                                                "the run (JobOverrideNotAllowed)."),
        "serviceAccountName": s("ServiceAccount of the agent pod; it needs no rights (the pod mounts no API "
                                "token). Refused (JobOverrideNotAllowed) unless the operator's allow-list (chart "
                                "value jobOverrides.allowedServiceAccounts) matches it.",
                                pattern=DNS_SUBDOMAIN),
        "priorityClassName": s("Priority class of the agent pod. Refused (JobOverrideNotAllowed) unless it is the "
                               "chart's jobDefaults.priorityClassName or the operator's allow-list (chart value "
                               "jobOverrides.allowedPriorityClasses) matches it."),
        "activeDeadlineSeconds": s("Deadline of the Job; when it passes the backup or restore fails.",
                                   "integer", minimum=1),
        "backoffLimit": s("Retries of the agent pod before the Job fails (default: the operator's "
                          "MOBACKUP_JOB_DEFAULTS, else 1).", "integer", minimum=0, maximum=10),
        "ttlSecondsAfterFinished": s("Seconds after which a finished Job is deleted (its result is already "
                                     "in the status).", "integer", minimum=0),
        "labels": {"type": "object", "description": "Extra labels of the Job and its pod. Keys of the "
                   "operator (mobackup.io/*, app.kubernetes.io/*) and of the Job controller (job-name, "
                   "batch.kubernetes.io/*) are ignored: the operator's labels win.",
                   "additionalProperties": {"type": "string"}},
        "annotations": {"type": "object", "description": "Extra annotations of the Job and its pod. Plain keys "
                        "(no '.' or '/') only, unless the operator's allow-list (chart value "
                        "jobOverrides.allowedAnnotations) matches the key; sandbox annotations (AppArmor, seccomp, "
                        "sysctls, Multus networks, container runtime keys) are always refused "
                        "(JobOverrideNotAllowed).",
                        "additionalProperties": {"type": "string"}},
    })


def conditions() -> Schema:
    cond = obj("A condition (metav1.Condition).", {
        "type": s("Type of the condition (Ready, Running, Completed, Failed, Available, Scheduled...)."),
        "status": s("Status of the condition.", enum=["True", "False", "Unknown"]),
        "reason": s("Machine-readable CamelCase reason of the last transition."),
        "message": s("Human-readable message of the last transition."),
        "lastTransitionTime": s("When the condition last changed.", format="date-time"),
        "observedGeneration": s("Generation of the spec the condition was computed from.", "integer"),
    }, ["type", "status"])
    return {"type": "array", "description": "Conditions of the resource.", "items": cond,
            "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]}


def progress() -> Schema:
    return obj("Progress of the copy, written by the operator from the Job's result (Jobs have no API "
               "access).", {
        "bytesDone": s("Bytes processed so far.", "integer"),
        "bytesTotal": s("Bytes to process in total.", "integer"),
        "filesDone": s("Files processed so far.", "integer"),
        "filesTotal": s("Files to process in total.", "integer"),
        "percent": s("Percent of bytes processed (0-100).", "integer"),
        "updatedAt": s("When it was written.", format="date-time"),
    })


def common_run_status(phases: list[str]) -> dict[str, Schema]:
    return {
        "phase": s("Where the run is.", enum=phases),
        "reason": s("CamelCase reason of the current phase (e.g. WaitingForLease, JobVanished)."),
        "message": s("Human-readable explanation of the current phase or error (never a secret)."),
        "conditions": conditions(),
        "observedGeneration": s("Generation of the spec last acted on.", "integer"),
        "backupID": s("ID of the backup in the repository."),
        "startTime": s("When the copy started (the Job was created).", format="date-time"),
        "completionTime": s("When the run completed or failed.", format="date-time"),
        "duration": s("Duration of the run, e.g. 1m3.2s."),
        "durationSeconds": s("Duration of the run in seconds.", "number"),
        "progress": progress(),
        "jobName": s("Name of the Job doing the copy."),
        "attempts": s("Pods the Job has started so far.", "integer"),
        "location": s("Location of the repository (bucket and prefix, or PVC); no credentials."),
        "scaledWorkload": obj("The workload scaled down for the copy, and its replicas before.", {
            "kind": s("StatefulSet or Deployment."), "name": s("Name of the workload."),
            "replicas": s("Replica count before the scale-down (restored afterwards).", "integer"),
            "scaledDownAt": s("When it was scaled down.", format="date-time"),
            "scaledUpAt": s("When it was scaled back.", format="date-time"),
        }),
    }


def column(name: str, path: str, type_: str = "string", priority: int = 0, desc: str = "") -> Schema:
    c: Schema = {"name": name, "type": type_, "jsonPath": path}
    if priority:
        c["priority"] = priority
    if desc:
        c["description"] = desc
    return c


AGE = column("Age", ".metadata.creationTimestamp", "date")


def crd(kind: str, plural: str, short: list[str], spec: Schema, status: Schema,
        columns: list[Schema], description: str) -> Schema:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{GROUP}",
                     "labels": {"app.kubernetes.io/name": "mo-backup-operator",
                                "app.kubernetes.io/part-of": "mo-backup-operator"}},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {"kind": kind, "listKind": f"{kind}List", "plural": plural, "singular": kind.lower(),
                      "shortNames": short, "categories": [CATEGORY]},
            "versions": [{
                "name": VERSION, "served": True, "storage": True,
                "subresources": {"status": {}},
                "additionalPrinterColumns": columns,
                "schema": {"openAPIV3Schema": {
                    "type": "object", "description": description,
                    "properties": {
                        "apiVersion": s("APIVersion of this object."),
                        "kind": s("Kind of this object."),
                        "metadata": {"type": "object"},
                        "spec": spec,
                        "status": status,
                    },
                    "required": ["spec"],
                }},
            }],
        },
    }


# ---------------------------------------------------------------------------------------------- kinds

def storage_crd() -> Schema:
    s3 = obj("An S3 (or S3-compatible: MinIO, Ceph...) bucket.", {
        "endpoint": s("Endpoint URL, e.g. https://minio.example:9000; empty for AWS.",
                      pattern=r"^https?://[^\s/]+(/.*)?$"),
        "bucket": s("Bucket name.", pattern=r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$"),
        "prefix": s("Key prefix of the repository inside the bucket.", default="",
                    pattern=r"^([^/\s][^\s]*)?$", maxLength=512),
        "region": s("Region of the bucket.", default="us-east-1"),
        "pathStyle": s("Use path-style addressing (needed by most MinIO setups).", "boolean", default=False),
        "caBundle": obj("A custom CA bundle (PEM) for the endpoint; from a ConfigMap or a Secret, mounted "
                        "into the Job.", {
                            "configMapRef": secret_key_ref("ConfigMap holding the PEM bundle.", "ca.crt",
                                                           "ConfigMap"),
                            "secretRef": secret_key_ref("Secret holding the PEM bundle.", "ca.crt"),
                        }, **{"x-kubernetes-validations": [{
                            "rule": "has(self.configMapRef) != has(self.secretRef)",
                            "message": "caBundle needs exactly one of configMapRef or secretRef"}]}),
        "credentialsSecretRef": s3_keys_ref(
            "Secret with the access keys (passed to Jobs as env from the Secret). Without it, the operator and "
            "its Jobs reach the bucket as the pod's own identity, and only if the bucket is in the operator's "
            "allow-list (chart value ambientCredentials.buckets); else the storage is Unavailable "
            "(AmbientCredentialsNotAllowed)."),
    }, ["bucket"])
    pvc = obj("A PersistentVolumeClaim holding the repository (mounted by every Job that uses it).", {
        "claimName": s("Name of the PersistentVolumeClaim, in the same namespace.", pattern=DNS_SUBDOMAIN),
        "path": s("Directory of the repository inside the volume.", default="mobackup", pattern=REL_PATH),
    }, ["claimName"])
    spec = obj("Where backups are stored.", {
        "s3": s3,
        "pvc": pvc,
        "encryption": obj("Client-side encryption of the repository (AES-256-GCM, keyed blob names). Set "
                          "it before the first backup: a repository is encrypted or not for its life.", {
                              "keySecretRef": secret_key_ref("Secret holding the encryption passphrase.",
                                                             "key"),
                          }, ["keySecretRef"]),
        "compression": s("Compression of new blobs when the repository is created.", enum=["none", "zstd"],
                         default="zstd"),
        "checkIntervalSeconds": s("How often the operator re-checks that the storage is reachable and the "
                                  "credentials work.", "integer", default=300, minimum=10),
        "copyTo": s("Other MOBackupStorages (same namespace) that every Completed MOBackup of this storage is "
                    "copied to, by a Job per backup and target (oldest first, one at a time per target). Each "
                    "target keeps its copies under its own retention: the operator never deletes a copy (not "
                    "when the MOBackup is deleted or pruned by a schedule); prune a target with `mobackup prune`.",
                    "array", maxItems=8, **{"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"],
                                            "items": obj("A target storage.", {
                                                "name": s("Name of the target MOBackupStorage (not this one).",
                                                          pattern=DNS_SUBDOMAIN),
                                            }, ["name"])}),
        "objectLock": obj(
            "S3 Object Lock (WORM) of the repository: every blob, file list and summary is written with a "
            "retention date `days` after its backup, and a blob's retention is extended while newer backups "
            "use it. The bucket must have been created with Object Lock enabled. The setting is recorded in "
            "the repository when its first backup creates it and is fixed from then on: a storage whose "
            "setting differs from the repository's is Unavailable (ObjectLockMismatch), and the field cannot "
            "be changed once set (a new prefix makes a new repository; copyTo moves backups there). Deleting "
            "a MOBackup, or a schedule's retention, waits until its backup's lock has passed "
            "(MOBackup status.lockedUntil).", {
                "days": s("Days each object is retained after its backup (fractions allowed).", "number",
                          exclusiveMinimum=True, minimum=0, maximum=36500),
                "mode": s("COMPLIANCE: nobody can delete early, not even the account's root; GOVERNANCE: only "
                          "a user with s3:BypassGovernanceRetention (mobackup never bypasses).",
                          enum=["COMPLIANCE", "GOVERNANCE"], default="COMPLIANCE"),
            }, ["days"], **{"x-kubernetes-validations": [
                {"rule": "self == oldSelf", "message": "objectLock is fixed once set: the repository records it "
                                                       "when created (use a new storage for another setting)"}]}),
    }, None, **{"x-kubernetes-validations": [
        {"rule": "has(self.s3) != has(self.pvc)", "message": "set exactly one of s3 or pvc"},
        {"rule": "!has(self.objectLock) || has(self.s3)", "message": "objectLock needs s3"},
        {"rule": "!has(oldSelf.objectLock) || has(self.objectLock)",
         "message": "objectLock cannot be removed: the repository keeps its lock"}]})
    status = obj("Observed state of the storage.", {
        "phase": s("Whether the storage was reachable at the last check.", enum=["Available", "Unavailable"]),
        "reason": s("CamelCase reason of the phase."),
        "message": s("Why the storage is unavailable (never a secret)."),
        "lastChecked": s("When reachability was last checked.", format="date-time"),
        "location": s("Location of the repository, e.g. s3://bucket/prefix (no credentials)."),
        "backupCount": s("Completed backups listed in the repository at the last check.", "integer"),
        "observedGeneration": s("Generation of the spec last checked.", "integer"),
        "stats": obj("What the repository stores (S3 storages; refreshed at a check when its backups changed, "
                     "else at most hourly; `mobackup stats` gives the per-backup figures).", {
            "storedBytes": s("Bytes of every object in the repository.", "integer"),
            "logicalBytes": s("Sum of the backups' logical sizes (what restoring each would write).", "integer"),
            "dedupRatio": s("Logical bytes / distinct plaintext bytes referenced.", "number"),
            "compressionRatio": s("Distinct plaintext bytes / their stored size.", "number"),
            "growthBytesPerDay": s("Bytes added per day, from the first backup to the last.", "number"),
            "unreferencedBytes": s("Blob bytes no backup references (what prune would remove).", "integer"),
            "bytesByRetentionClass": obj(
                "Bytes of the backups (each its share of the blobs it uses and its own metadata) by retention "
                "class: what the retention of the MOBackupSchedules backing a source up into this storage keeps "
                "each backup for (the longest-lived rule first; a schedule without rules keeps its "
                "successfulBackupsHistoryLimit as keep-last). Classes without backups are absent.", {
                    "monthly": s("Kept by keepMonthly.", "integer"),
                    "weekly": s("Kept by keepWeekly (and by no longer-lived rule).", "integer"),
                    "daily": s("Kept by keepDaily.", "integer"),
                    "within": s("Kept by keepWithin.", "integer"),
                    "last": s("Kept by keepLast (or the history limit).", "integer"),
                    "newest": s("The newest backup of its source, kept by no other rule.", "integer"),
                    "unmanaged": s("Of sources no schedule (or no single retention) applies to.", "integer"),
                    "locked": s("Beyond the retention, held by S3 Object Lock.", "integer"),
                    "prunable": s("Beyond the retention: the schedule deletes them at its next pass (MOBackups "
                                  "not of a schedule, e.g. copies or manual ones, stay until deleted).", "integer"),
                }),
            "backups": s("Backups counted.", "integer"),
            "computedAt": s("When these figures were computed.", format="date-time"),
            "message": s("Why the figures were not computed (a repository too large for the operator's scratch "
                         "space: run `mobackup stats`)."),
        }),
        "objectLock": obj("The Object Lock the repository records (S3 storages the operator opens, once the "
                          "repository exists).", {
                              "days": s("Retention after each backup, in days.", "number"),
                              "mode": s("COMPLIANCE or GOVERNANCE."),
                          }),
        "copies": s("Per copyTo target: the copy state of this storage's Completed backups.", "array",
                    items=obj("One target.", {
                        "storage": s("Name of the target MOBackupStorage."),
                        "copied": s("Completed backups of this storage already in the target.", "integer"),
                        "pending": s("Completed backups not yet copied.", "integer"),
                        "oldestPending": s("Completion time of the oldest backup not yet copied (metric "
                                           "mobackup_copy_lag_seconds: its age).", format="date-time"),
                        "reason": s("Why copies do not proceed (CamelCase), if they do not."),
                        "message": s("What is wrong, if anything."),
                    })),
        "conditions": conditions(),
    })
    cols = [column("Phase", ".status.phase"), column("Location", ".status.location"),
            column("Backups", ".status.backupCount", "integer"),
            column("Last Checked", ".status.lastChecked", "date"), AGE,
            column("Message", ".status.message", priority=1)]
    return crd("MOBackupStorage", "mobackupstorages", ["mobs"], spec, status, cols,
               "MOBackupStorage is a backup repository: an S3 bucket/prefix or a PVC, with optional "
               "client-side encryption and compression.")


def shared_storage(what: str) -> Schema:
    return obj(f"{what} whose table data lives in S3, given directly (without the MatrixOne operator): the "
               "fields of a MatrixOneCluster's spec.logService.sharedStorage.", {
        "s3": obj("The S3 location of the table data.", {
            "path": s("bucket/folder, as in a MatrixOneCluster: the table data (MatrixOne's SHARED file service) "
                      "is under folder/data unless keyPrefix says otherwise.", minLength=1, maxLength=1024,
                      pattern=r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/[A-Za-z0-9!_.*()/-]*)?$"),
            "keyPrefix": s("The SHARED file service's key-prefix inside the bucket, for a MatrixOne configured by "
                           "hand (default folder/data).", maxLength=1024, pattern=r"^[A-Za-z0-9!_.*()/-]+$"),
            "type": s("aws, or minio (path-style addressing).", enum=["aws", "minio"], default="aws"),
            "endpoint": s("S3 endpoint URL (default: AWS's for the region).",
                          pattern=r"^https?://[^\s/]+(/.*)?$", maxLength=2048),
            "region": s("Region of the bucket.", default="us-west-2", maxLength=64),
            "secretRef": obj("Secret with AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (MatrixOne's BACKUP needs "
                             "the keys; they reach it inside the statement, never in logs).", {
                "name": s(f"Name of the Secret, in the same namespace{OPTED_IN}.", pattern=DNS_SUBDOMAIN,
                          maxLength=253)},
                ["name"]),
        }, ["path", "secretRef"]),
    }, ["s3"])


def cluster_ref(description: str) -> Schema:
    return obj(description, {"name": s("Name of the MatrixOneCluster (core.matrixorigin.io/v1alpha1), in the "
                                       "same namespace.", pattern=DNS_SUBDOMAIN, maxLength=253)}, ["name"])


def backup_spec(in_template: bool = False) -> Schema:
    source = obj("The MatrixOne data to back up.", {
        "pvc": pvc_ref("The PersistentVolumeClaim holding mo-data.", "mo-data",
                       "Path of the mo-data directory inside the volume ('.' when the volume is mo-data)."),
        "workload": workload_ref("The StatefulSet or Deployment that runs MatrixOne on this volume "
                                 "(scaled to 0 during a Stop-consistent copy, then restored)."),
        "name": s("Name of the source in the repository (groups its backups, chooses incremental bases); "
                  "default <namespace>/<claimName>.", pattern=r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,252}$"),
        "sql": sql_endpoint("The SQL endpoint of MatrixOne (a sys-account user such as root or dump). With "
                            "it the backup is Online by default: MatrixOne's own BACKUP statement copies the "
                            "running database. With Stop it forces a checkpoint before the copy."),
        "serverDataDir": s("Online: absolute path of the data directory (pvc.path) inside the MatrixOne "
                           "container, where BACKUP writes its staging copy before the Job stores it. "
                           "Default: found from the workload's pod template (the mount of pvc.claimName).",
                           pattern=r"^/[^']*$", maxLength=4096),
        "cluster": cluster_ref("A MatrixOneCluster of the MatrixOne operator (its table data in S3), instead of "
                               "pvc: the S3 location is read from its spec.logService.sharedStorage.s3, the SQL "
                               "endpoint from its status.host/port and status.credentialRef (source.sql "
                               "overrides). Always Online; no volume is mounted."),
        "sharedStorage": shared_storage("A MatrixOne (instead of pvc)"),
        "staging": obj("Table data in S3: where MatrixOne's BACKUP writes its copy before the Jobs store it "
                       "(removed after every run).", {
            "path": s("bucket/prefix (default: <bucket>/<folder>/mobackup-staging of the cluster's storage; "
                      "MatrixOne writes there with the cluster's keys).", maxLength=1024,
                      pattern=r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/[A-Za-z0-9!_.*()/-]*)?$"),
            "serverEndpoint": s("The S3 endpoint as MatrixOne reaches it, when it differs from the Jobs' "
                                "(default: the storage's endpoint).", pattern=r"^https?://[^\s/]+(/.*)?$",
                                maxLength=2048),
        }),
    }, **{"x-kubernetes-validations": [
        {"rule": "(has(self.pvc) ? 1 : 0) + (has(self.cluster) ? 1 : 0) + (has(self.sharedStorage) ? 1 : 0) == 1",
         "message": "set exactly one of pvc, cluster or sharedStorage"},
        {"rule": "!has(self.sharedStorage) || has(self.sql)",
         "message": "sharedStorage needs sql (MatrixOne runs the backup)"},
        {"rule": "has(self.pvc) || (!has(self.workload) && !has(self.serverDataDir))",
         "message": "workload and serverDataDir apply to a data volume (pvc)"},
    ]})
    props: dict[str, Schema] = {
        "source": source,
        "storageRef": name_ref("The MOBackupStorage to write to."),
        "type": s("Full copies everything; Incremental stores only what its base lacks (its manifest is "
                  "still complete: restoring it needs no chain replay).", enum=["Full", "Incremental"],
                  default="Full"),
        "baseBackupName": s("MOBackup whose backup is the base of an Incremental (default: the latest "
                            "Completed backup of the same source in the same storage).",
                            pattern=DNS_SUBDOMAIN),
        "baseBackupID": s("Backup ID of the base of an Incremental (alternative to baseBackupName).",
                          pattern=BACKUP_ID),
        "consistency": s("Online (the default when source.sql is set): MatrixOne's own BACKUP statement "
                         "makes a consistent, GC-protected copy of the running database into a staging "
                         "directory on its volume, which the Job checks and stores; no downtime. Stop (the "
                         "default otherwise): scale the workload to 0, wait until its pods are gone, copy, "
                         "restore the replica count. Snapshot: CSI VolumeSnapshot of the PVC, copy from a "
                         "clone (refused when the cluster has no VolumeSnapshot API). None: copy as is "
                         "(only when MatrixOne is already stopped).", enum=["Online", "Stop", "Snapshot", "None"]),
        "snapshotClassName": s("VolumeSnapshotClass of consistency Snapshot (default: the cluster's default "
                               "class).", pattern=DNS_SUBDOMAIN),
        "parallelism": s("Concurrent file transfers of the agent (default: 4 to a PVC, 8 to S3, the best "
                         "measured in benchmarks/).", "integer", minimum=1, maximum=64),
        "parallelPods": s("Table data in S3: store the staged copy with this many pods at once (an Indexed "
                          "Job, each pod a disjoint shard; the backup is listed once, after every shard "
                          "succeeded). 1: one pod does it all.", "integer", minimum=1, maximum=64, default=1),
        "bandwidthLimit": s("Upper bound of the transfer rate, bytes per second as a quantity (50Mi, 100M); "
                            "empty means unlimited.", pattern=QUANTITY),
        "deletionPolicy": s("What deleting this resource does to the backup's data: Retain keeps it, Delete "
                            "removes it from the repository. Backups based on it stay restorable: every "
                            "backup's file list is complete, and the blobs they use are kept.",
                            enum=["Retain", "Delete"], default="Delete" if in_template else "Retain"),
        "job": job_overrides(),
        "pointInTime": pitr_window_schema("the backup"),
    }
    validations = [
        {"rule": "!has(self.baseBackupName) || !has(self.baseBackupID)",
         "message": "set at most one of baseBackupName or baseBackupID"},
        {"rule": "self.type == 'Incremental' || (!has(self.baseBackupName) && !has(self.baseBackupID))",
         "message": "a base backup is only meaningful for type Incremental"},
        {"rule": "!has(self.source.pvc) || (has(self.consistency) ? self.consistency != 'Stop' : "
                 "has(self.source.sql)) || has(self.source.workload)",
         "message": "consistency Stop (the default without source.sql) needs source.workload (the workload to "
                    "scale down)"},
        {"rule": "!has(self.consistency) || self.consistency != 'Online' || has(self.source.sql) "
                 "|| has(self.source.cluster)",
         "message": "consistency Online needs source.sql (MatrixOne runs the backup)"},
        {"rule": "has(self.source.pvc) || !has(self.consistency) || self.consistency == 'Online'",
         "message": "table data in S3 (source.cluster or sharedStorage) is backed up Online"},
        *PITR_BACKUP_RULES,
    ]
    if in_template:
        del props["type"], props["baseBackupName"], props["baseBackupID"]
        validations = validations[2:]
    else:
        # What was copied cannot change afterwards; deletionPolicy and job overrides may.
        for field in ("source", "storageRef", "type", "baseBackupName", "baseBackupID", "consistency"):
            props[field]["x-kubernetes-validations"] = [
                *props[field].get("x-kubernetes-validations", []),
                {"rule": "self == oldSelf", "message": f"{field} is immutable"}]
    return obj("What to back up, where and how.", props, ["source", "storageRef"],
               **{"x-kubernetes-validations": validations})


def backup_crd() -> Schema:
    phases = ["Pending", "Running", "Completed", "Failed"]
    props = common_run_status(phases)
    props.update({
        "type": s("Full or Incremental (as stored)."),
        "baseBackupID": s("Backup ID of the base of an incremental backup."),
        "backupTS": s("Consistency timestamp of the backup (MatrixOne HLC format <physical ns>-<logical>)."),
        "size": s("Logical size of the backed-up tree, human readable (e.g. 65.2 MiB)."),
        "sizeBytes": s("Logical size of the backed-up tree in bytes.", "integer"),
        "newBytes": s("Bytes newly stored in the repository by this backup (after dedup and compression).",
                      "integer"),
        "fileCount": s("Files in the backup.", "integer"),
        "source": s("Name of the source in the repository."),
        "storage": s("Name of the MOBackupStorage."),
        "mobackupVersion": s("Version of mobackup that wrote the backup."),
        "copyDurationSeconds": s("Duration of the copy alone, as measured by the agent.", "number"),
        "moVersion": s("MatrixOne version reported by the SQL endpoint."),
        "step": s("Table data in S3: the step running (backup: all in one pod; stage, ingest, commit with "
                  "parallelPods > 1)."),
        "runID": s("Table data in S3 with parallelPods > 1: the staged run (its record is in the repository "
                   "until commit)."),
        "sharedStorage": s("Table data in S3: the S3 prefix of the table data (s3://bucket/key-prefix)."),
        "consistency": s("How the copy was made consistent: Online, Stop, Snapshot or None."),
        "stagedBytes": s("Online: bytes MatrixOne's BACKUP staged on the volume (only files new since an "
                         "online base for an Incremental).", "integer"),
        "storedBytes": s("Bytes this backup added to the repository (after compression and encryption).",
                         "integer"),
        "lockedUntil": s("S3 Object Lock: until when the bucket keeps this backup's summary and file list; it "
                         "can be deleted from then on (deletion and retention wait).", format="date-time"),
        "lockMode": s("S3 Object Lock mode of the backup (COMPLIANCE or GOVERNANCE)."),
        "copies": s("Where else this backup lives: one entry per copyTo target of its storage it was copied to "
                    "(written by the operator once it found the backup in the target).", "array",
                    items=obj("A copy.", {
                        "storage": s("Name of the target MOBackupStorage."),
                        "location": s("Repository location of the target (no credentials)."),
                        "backupID": s("Backup ID in the target (a copy keeps the ID)."),
                        "completionTime": s("When the copy completed.", format="date-time"),
                    })),
        "copyFailures": s("Copies that failed, by target (retried every 5 minutes).", "array",
                          items=obj("A failed copy.", {
                              "storage": s("Name of the target MOBackupStorage."),
                              "reason": s("CamelCase reason."),
                              "message": s("The agent's error (never a secret)."),
                              "attempts": s("Failed attempts so far.", "integer"),
                              "time": s("When the last attempt failed.", format="date-time"),
                          })),
        "checkpoint": obj("The checkpoint forced through the SQL endpoint before the copy.", {
            "time": s("When it was asked for.", format="date-time"),
            "ok": s("Whether MatrixOne confirmed it.", "boolean"),
            "message": s("MatrixOne's answer or the error."),
        }),
        **backup_pitr_status(),
        "snapshot": obj("The VolumeSnapshot and its clone PVC of a Snapshot-consistent backup.", {
            "name": s("Name of the VolumeSnapshot."),
            "cloneClaim": s("Name of the PVC restored from it, which the Job copies."),
            "readyAt": s("When the snapshot became ready to use.", format="date-time"),
        }),
    })
    cols = [column("Phase", ".status.phase"), column("Type", ".status.type"),
            column("Backup ID", ".status.backupID"), column("Size", ".status.size"),
            column("BackupTS", ".status.backupTS"), column("Duration", ".status.duration"),
            column("Recoverable To", ".status.recoverableTo",
                   desc="The newest instant this backup can be restored to with pointInTime (empty: none)."), AGE,
            column("Recoverable From", ".status.recoverableFrom", priority=1),
            column("Base", ".status.baseBackupID", priority=1),
            column("Source", ".status.source", priority=1),
            column("Progress", ".status.progress.percent", "integer", priority=1),
            column("Step", ".status.step", priority=1),
            column("Message", ".status.message", priority=1)]
    return crd("MOBackup", "mobackups", ["mob"], backup_spec(), obj("Observed state of the backup.", props),
               cols, "MOBackup is one physical backup of a MatrixOne data directory, run by a Job.")


# MatrixOne names as a scoped restore takes them (engine/scoped.py check_name): 1-64 characters, no
# control character, no surrounding space; a database name holds no dot (DB.TABLE splits at the first).
DB_NAME = r"[^.\s\x00-\x1f\x7f]([^.\x00-\x1f\x7f]{0,62}[^.\s\x00-\x1f\x7f])?"
TABLE_NAME = r"[^\s\x00-\x1f\x7f]([^\x00-\x1f\x7f]{0,62}[^\s\x00-\x1f\x7f])?"


def scope_spec() -> Schema:
    listed = "(has(self.databases) ? size(self.databases) : 0) + (has(self.tables) ? size(self.tables) : 0)"
    return obj("Restore only these databases and tables, copied into the RUNNING MatrixOne of target.sql "
               "(never stopped): the backup is restored into a scratch volume, a scratch MatrixOne started on it, "
               "and each table copied over SQL (schema from SHOW CREATE TABLE, rows in batches) and checked "
               "(row count and checksum on both ends). By default each table goes beside its original as "
               "<table>_restored_<UTC yyyymmddhhmmss>; an existing target is refused unless replace. Refused "
               "before anything is written to the live server: a name not in the backup (the message lists what "
               "is), a target that exists, a live server that is not MatrixOne or not reachable, a scratch "
               "volume smaller than the backup.", {
                   "databases": {"type": "array", "maxItems": 100, "description":
                                 "Databases restored whole (every table; views are left out and listed).",
                                 "items": s("A database of the backup.", pattern=f"^{DB_NAME}$", maxLength=64)},
                   "tables": {"type": "array", "maxItems": 1000, "description": "Tables, as <database>.<table>.",
                              "items": s("A table of the backup, <database>.<table>.",
                                         pattern=f"^{DB_NAME}\\.{TABLE_NAME}$", maxLength=129)},
                   "as": s("The target's name: <database>.<table> for one table, or a database (for one "
                           "database, or one table keeping its name). Excludes suffix.",
                           pattern=f"^{DB_NAME}(\\.{TABLE_NAME})?$", maxLength=129),
                   "suffix": s("The targets' names: each table's name plus this suffix, in its own database "
                               "(default _restored_<UTC yyyymmddhhmmss>). Excludes as.",
                               pattern="^[^\\x00-\\x1f\\x7f]{0,59}[^\\s\\x00-\\x1f\\x7f]$", maxLength=60),
                   "replace": s("Copy over an existing table of the target's name: the copy goes to a temporary "
                                "name, is checked, then swapped in (two RENAMEs); the old table is kept as "
                                "<table>_replaced_<stamp>, never dropped; a failed check leaves it untouched.",
                                "boolean", default=False),
                   "copyMethod": s("How the rows go into the live server: insert (multi-row INSERTs of about "
                                   "1 MB, each its own transaction) or load (the scratch MatrixOne exports each "
                                   "table with SELECT INTO OUTFILE into the pod's own emptyDir, and the file's "
                                   "bytes go to the live server by LOAD DATA LOCAL over two connections, one "
                                   "statement per 16 MB of whole rows; the live server gets only those bytes, never "
                                   "a file of ours; 2-3x faster than insert for 1M rows). Both end with the row "
                                   "count and checksum check.",
                                   enum=["insert", "load"], default="insert"),
                   "scratch": obj("The scratch volume the backup is restored into (created for the restore, "
                                  "deleted after).", {
                                      "storageClassName": s("StorageClass of the scratch PVC (default: the "
                                                            "cluster's default class)."),
                                      "size": s("Size of the scratch PVC: at least the backup's size plus 512 MiB "
                                                "for the scratch MatrixOne (checked before anything is made).",
                                                pattern=QUANTITY, default="10Gi"),
                                  }),
                   "timeoutSeconds": s("Time the scratch MatrixOne has to answer SQL and the copy to finish; the "
                                       "pod's deadline adds one hour for the restore before them.", "integer",
                                       minimum=30, default=900),
               }, **{"x-kubernetes-validations": [
                   {"rule": f"{listed} >= 1", "message": "list at least one database or table"},
                   {"rule": "!(has(self.as) && has(self.suffix))", "message": "as and suffix exclude each other"},
                   {"rule": f"!has(self.as) || {listed} == 1",
                    "message": "as names one target: list one database or one table with it"},
               ]})


def scoped_status() -> dict[str, Schema]:
    """MORestore status fields of a scoped restore (k8s/scoped.py)."""
    table = obj("One table copied into the running MatrixOne.", {
        "source": s("The table in the backup, <database>.<table>."),
        "target": s("Where it went on the live server."),
        "rows": s("Rows copied (the same count was read back from the live copy).", "integer"),
        "checksum": s("Order-independent checksum of the rows, computed by each server: the sum modulo 2^128 of "
                      "the MD5 of each row's serial_full(every column) (MatrixOne's typed tuple encoding, NULL "
                      "marked), 32 hex digits; the same from the backup's rows and the live copy."),
        "seconds": s("Seconds the table took: create, copy, check and swap.", "number"),
        "replaced": s("With replace: where the old table was kept."),
    })
    return {
        "tables": {"type": "array", "description": "Scoped restore: each table copied and checked.",
                   "items": table},
        "rowsCopied": s("Scoped restore: rows copied in all.", "integer"),
        "tablesLeftOut": s("Scoped restore: tables copied but not listed in status.tables (its size limit).",
                           "integer"),
        "skipped": {"type": "array", "items": {"type": "string"},
                    "description": "Scoped restore: views and other non-tables of a selected database (not copied)."},
        "liveVersion": s("Scoped restore: the running MatrixOne's version (select version())."),
        "scratchClaim": s("Scoped restore: the scratch PVC (deleted when the restore ends)."),
        "hostname": s("Scoped restore: host name the scratch MatrixOne ran under."),
        "restoreSeconds": s("Scoped restore: seconds the restore into the scratch volume took.", "number"),
        "startSeconds": s("Scoped restore: seconds until the scratch MatrixOne answered SQL.", "number"),
        "copySeconds": s("Scoped restore: seconds the copy of every table took.", "number"),
        "cleanedUp": s("Scoped restore: every scratch object (Job, pod, PVC) is deleted.", "boolean"),
    }


def restore_crd() -> Schema:
    spec = obj("Which backup to restore, where, and how.", {
        "backupName": s("MOBackup (Completed) to restore.", pattern=DNS_SUBDOMAIN),
        "backupID": s("Backup ID to restore (with storageRef), e.g. one made elsewhere.", pattern=BACKUP_ID),
        "storageRef": name_ref("MOBackupStorage holding backupID."),
        "target": obj("Where to restore: set exactly one of pvc, cluster or sharedStorage (or sql, with "
                      "scope).", {
            "pvc": pvc_ref("The PersistentVolumeClaim to restore into.", "mo-data",
                           "Path of the mo-data directory inside the volume."),
            "cluster": cluster_ref("A MatrixOneCluster (stopped: every set's replicas 0, else Failed with reason "
                                   "ClusterRunning): the backup of table data in S3 goes under its "
                                   "sharedStorage (folder/data; a non-empty prefix needs overwrite), and the ID "
                                   "allocator state to <folder>/hk_data, where a new cluster created with "
                                   "spec.logService.initialConfig.restoreFrom: hk_data reads it."),
            "sharedStorage": shared_storage("The MatrixOne to restore into"),
            "logVolume": pvc_ref("Table data in S3: the log service's volume (of a StatefulSet-run log service, "
                                 "its first replica). The ID allocator state (hk_data) is written to the root of "
                                 "its LOCAL file service there; MatrixOne's old log there is removed first (so a "
                                 "non-empty directory needs overwrite).", "data",
                                 "The LOCAL file service's root inside the volume (data: the MatrixOne "
                                 "operator's /var/lib/matrixone/data)."),
            "sql": sql_endpoint("With spec.scope: the RUNNING MatrixOne the selected tables are copied into "
                                "(never stopped). The user needs CREATE and INSERT there (and RENAME with "
                                "replace); the scratch MatrixOne holds the backup's accounts and is signed into "
                                "with the same user and password."),
            "workload": workload_ref("The workload to stop before the restore and start again after it."),
            "hostname": s("Pod hostname of the MatrixOne that will run on the target: its log directory "
                          "(logservice-data/<uuid>/<hostname>/) must match, or MatrixOne cannot start; a "
                          "backup of another host is refused. Default <statefulset>-0 for a StatefulSet "
                          "workload, no check otherwise.", pattern=DNS_LABEL, maxLength=63),
        }, **{"x-kubernetes-validations": [
            {"rule": "(has(self.pvc) ? 1 : 0) + (has(self.cluster) ? 1 : 0) + (has(self.sharedStorage) ? 1 : 0) "
                     "+ (has(self.sql) ? 1 : 0) == 1",
             "message": "set exactly one of pvc, cluster, sharedStorage or (with scope) sql"},
            {"rule": "!has(self.sql) || !(has(self.workload) || has(self.hostname) || has(self.logVolume))",
             "message": "target.sql (a scoped restore into the running MatrixOne) stops nothing and writes no "
                        "volume: workload, hostname and logVolume do not apply"},
            {"rule": "!has(self.logVolume) || !has(self.pvc)",
             "message": "logVolume applies to table data in S3 (cluster or sharedStorage)"},
            {"rule": "!has(self.cluster) || !has(self.workload)",
             "message": "stop a MatrixOneCluster through its spec (replicas 0), not through workload"}]}),
        "overwrite": s("Replace the content of a non-empty target. When false a non-empty target fails the "
                       "restore with a reason and nothing is touched.", "boolean", default=False),
        "sqlCheck": obj("After the workload is back, connect and run `select version()` and "
                        "`show databases` (optional).", {
                            **sql_endpoint("")["properties"],
                            "timeoutSeconds": s("How long to wait for the SQL endpoint.", "integer",
                                                default=300, minimum=5),
                        }, ["host", "passwordSecretRef"]),
        "parallelism": s("Concurrent file transfers of the agent (default: 4 to a PVC, 8 to S3, the best "
                         "measured in benchmarks/).", "integer", minimum=1, maximum=64),
        "scope": scope_spec(),
        "parallelPods": s("Table data in S3: upload the objects with this many pods at once (an Indexed Job, "
                          "each pod a disjoint shard), then one pod checks them all, removes the others "
                          "(overwrite) and writes the ID allocator state. 1: one pod does it all.", "integer",
                          minimum=1, maximum=64, default=1),
        "job": job_overrides(),
        "pointInTime": RESTORE_POINT_IN_TIME,
    }, ["target"], **{"x-kubernetes-validations": [
        *PITR_RESTORE_RULES,
        {"rule": "!has(self.backupID) || has(self.storageRef)",
         "message": "backupID needs storageRef"},
        {"rule": "!has(self.target.pvc) || !has(self.parallelPods) || self.parallelPods == 1",
         "message": "parallelPods applies to table data in S3 (target.cluster or sharedStorage)"},
        {"rule": "has(self.scope) == has(self.target.sql)",
         "message": "scope goes with target.sql (the running MatrixOne the tables go into), and target.sql with scope"},
        {"rule": "!has(self.scope) || (!self.overwrite && !has(self.sqlCheck) && !has(self.parallelism) && "
                 "(!has(self.parallelPods) || self.parallelPods == 1))",
         "message": "overwrite, sqlCheck, parallelism and parallelPods do not apply to a scoped restore"},
        {"rule": "self == oldSelf", "message": "the spec of a MORestore is immutable"},
    ]})
    props = common_run_status(["Pending", "Running", "Completed", "Failed"])
    props.update({
        "storage": s("Name of the MOBackupStorage restored from."),
        "restoredBytes": s("Bytes written into the target.", "integer"),
        "size": s("Bytes written into the target, human readable."),
        "fileCount": s("Files written into the target.", "integer"),
        "backupTS": s("Consistency timestamp of the restored backup."),
        "target": s("The target, as claimName/path (or the MatrixOneCluster, or the S3 prefix)."),
        "sharedStorage": s("Table data in S3: the S3 prefix restored into (s3://bucket/key-prefix)."),
        "step": s("Table data in S3: the step running (restore: all in one pod; shards, finalize with "
                  "parallelPods > 1)."),
        "sqlCheck": s("Result of the SQL check after the start (databases listed, or the error)."),
        "sqlCheckSince": s("When the SQL check started waiting for the endpoint.", format="date-time"),
        **scoped_status(),
        "pointInTime": restore_pitr_status(),
    })
    cols = [column("Phase", ".status.phase"), column("Backup ID", ".status.backupID"),
            column("Target", ".status.target"), column("Size", ".status.size"),
            column("Duration", ".status.duration"), AGE,
            column("Progress", ".status.progress.percent", "integer", priority=1),
            column("Step", ".status.step", priority=1),
            column("Rows", ".status.rowsCopied", "integer", priority=1),
            column("To Time", ".status.pointInTime.time", priority=1),
            column("Message", ".status.message", priority=1)]
    return crd("MORestore", "morestores", ["mor"], spec, obj("Observed state of the restore.", props), cols,
               "MORestore restores a backup into a MatrixOne data volume (stopping its workload meanwhile).")


def schedule_crd() -> Schema:
    cron_desc = ("5-field cron expression in the schedule's time zone (minute hour day-of-month month "
                 "day-of-week), or @hourly/@daily/@weekly/@monthly/@yearly, or @every <duration> (e.g. "
                 "@every 6h).")
    template = obj("The MOBackup created on each run (type and base are set by the schedule).", {
        "metadata": obj("Labels and annotations of the created MOBackups.", {
            "labels": {"type": "object", "additionalProperties": {"type": "string"},
                       "description": "Extra labels."},
            "annotations": {"type": "object", "additionalProperties": {"type": "string"},
                            "description": "Extra annotations."},
        }),
        "spec": backup_spec(in_template=True),
    }, ["spec"])
    spec = obj("When to back up, what, and what to keep.", {
        "fullSchedule": s("When to take Full backups. " + cron_desc, minLength=1, maxLength=128),
        "incrementalSchedule": s("When to take Incremental backups (on the latest Completed backup). "
                                 + cron_desc, maxLength=128),
        "timeZone": s("IANA time zone of the cron expressions.", default="UTC"),
        "suspend": s("Stop creating backups (running ones finish).", "boolean", default=False),
        "concurrencyPolicy": s("Forbid: skip a run while a backup of this schedule is still Pending or "
                               "Running. Allow: create it anyway (it waits for the source's Lease).",
                               enum=["Forbid", "Allow"], default="Forbid"),
        "startingDeadlineSeconds": s("A run missed by more than this (e.g. operator down) is skipped.",
                                     "integer", minimum=1, default=3600),
        "template": template,
        "pointInTime": pitr_window_schema("every backup of the schedule (overrides the template's)"),
        "retention": obj("Which Completed backups of this schedule to keep (the rest are deleted, "
                         "data following their deletionPolicy). The newest Completed backup is always kept. "
                         "Being the base of other backups keeps none (each restores on its own: its file list is "
                         "complete); only a backup still running keeps its base until it ends.", {
                             "keepLast": s("Keep the N newest.", "integer", minimum=0),
                             "keepDaily": s("Keep the newest of each of the last N days with a backup.",
                                            "integer", minimum=0),
                             "keepWeekly": s("Keep the newest of each of the last N ISO weeks with a backup.",
                                             "integer", minimum=0),
                             "keepMonthly": s("Keep the newest of each of the last N months with a backup.",
                                              "integer", minimum=0),
                             "keepWithin": s("Keep every backup younger than this (e.g. 36h, 7d, 2w).",
                                             pattern=DURATION),
                         }),
        "successfulBackupsHistoryLimit": s("Completed MOBackups kept when no retention is set.", "integer",
                                           minimum=1, default=10),
        "failedBackupsHistoryLimit": s("Failed MOBackups of this schedule to keep (older ones are deleted).",
                                       "integer", minimum=0, default=3),
        "drill": obj("Restore drills of this schedule's backups: a MORestoreDrill (owned by the schedule) "
                     "for the first Completed backup and then for the newest one once everyNthBackup more "
                     "have completed.", {
                         "everyNthBackup": s("Drill every Nth Completed backup (1: every one).", "integer",
                                             minimum=1, default=1),
                         "template": obj("The drills' spec, without the backup (set by the schedule).",
                                         {k: v for k, v in drill_crd()["spec"]["versions"][0]["schema"]
                                          ["openAPIV3Schema"]["properties"]["spec"]["properties"].items()
                                          if k not in ("backupName", "backupID", "source", "storageRef")}),
                         "successfulDrillsHistoryLimit": s("Completed drills kept (older ones are deleted).",
                                                           "integer", minimum=0, default=3),
                         "failedDrillsHistoryLimit": s("Failed drills kept (older ones are deleted).", "integer",
                                                       minimum=0, default=3),
                     }),
    }, ["fullSchedule", "template"])
    status = obj("Observed state of the schedule.", {
        "lastScheduleTime": s("When a backup was last created.", format="date-time"),
        "lastFullScheduleTime": s("Scheduled time of the last Full run.", format="date-time"),
        "lastIncrementalScheduleTime": s("Scheduled time of the last Incremental run.", format="date-time"),
        "nextScheduleTime": s("When the next backup is due.", format="date-time"),
        "nextFullScheduleTime": s("When the next Full backup is due.", format="date-time"),
        "nextIncrementalScheduleTime": s("When the next Incremental backup is due.", format="date-time"),
        "lastSuccessfulBackup": s("Name of the newest Completed MOBackup of the schedule."),
        "retentionHeld": s("Completed MOBackups the retention would delete but S3 Object Lock still holds "
                           "(spec.objectLock of the storage): each is deleted by the first pass after its date.",
                           "array", items=obj("A held backup.", {
                               "name": s("Name of the MOBackup."),
                               "lockedUntil": s("When its lock passes.", format="date-time"),
                           })),
        "lastSuccessfulTime": s("Completion time of the newest Completed MOBackup.", format="date-time"),
        "active": {"type": "array", "items": {"type": "string"},
                   "description": "MOBackups of this schedule that are Pending or Running."},
        "lastRunNow": s("The last value of the mobackup.io/run-now annotation acted on (\"backup now\")."),
        "lastDrilledBackup": s("The newest MOBackup a MORestoreDrill of this schedule was created for."),
        "reason": s("CamelCase reason of the last decision (e.g. Suspended, SkippedConcurrent)."),
        "message": s("Human-readable note on the last decision or error."),
        "observedGeneration": s("Generation of the spec last acted on.", "integer"),
        "conditions": conditions(),
    })
    cols = [column("Full", ".spec.fullSchedule"), column("Incremental", ".spec.incrementalSchedule"),
            column("Suspend", ".spec.suspend", "boolean"),
            column("Last Schedule", ".status.lastScheduleTime", "date"),
            # A `date` column renders every future time as <invalid>: show the timestamp itself.
            column("Next", ".status.nextScheduleTime", desc="When the next backup is due (UTC)."),
            column("Last Success", ".status.lastSuccessfulBackup"), AGE,
            column("Message", ".status.message", priority=1)]
    return crd("MOBackupSchedule", "mobackupschedules", ["mobsched"], spec, status, cols,
               "MOBackupSchedule creates MOBackups on cron schedules and applies a retention policy to them.")


def drill_crd() -> Schema:
    spec = obj("Which backup to drill, the scratch volume, the checks and the time limit.", {
        "backupName": s("MOBackup (Completed) to drill.", pattern=DNS_SUBDOMAIN),
        "backupID": s("Backup ID to drill (with storageRef), e.g. one made elsewhere.", pattern=BACKUP_ID),
        "source": s("Drill the newest Completed MOBackup of this source (its status.source, e.g. "
                    "<namespace>/<claim>); with storageRef, only backups stored there."),
        "storageRef": name_ref("MOBackupStorage holding backupID (or filtering source)."),
        "scratch": obj("The scratch volume the backup is restored into (created for the drill, deleted after).", {
            "storageClassName": s("StorageClass of the scratch PVC (default: the cluster's default class)."),
            "size": s("Size of the scratch PVC: the backup's size plus room for MatrixOne's own files "
                      "(about 150 MB).", pattern=QUANTITY, default="10Gi"),
        }),
        "checks": {"type": "array", "description": "Queries whose first value must equal `expect`.",
                   "items": obj("A user check.", {
                       "query": s("SQL query run on the scratch MatrixOne.", minLength=1),
                       "expect": s("Expected first column of the first row, as text (NULL for null)."),
                   }, ["query", "expect"])},
        "timeoutSeconds": s("Time the scratch MatrixOne has to answer SQL and the checks to run (a MatrixOne "
                            "that never answers fails the drill here); the pod's deadline adds one hour for the "
                            "restore before them.", "integer", minimum=30, default=900),
        "hostname": s("Host name of the scratch MatrixOne pod. Default: for a cold backup (Stop/Snapshot/None) "
                      "of a StatefulSet, its first pod's (<statefulset>-0), since the log service is bound to "
                      "it; none for an online backup.", pattern=DNS_LABEL, maxLength=63),
        "sql": obj("Credentials of the restored data (it keeps the source's users).", {
            "user": s("SQL user.", default="root"),
            "port": s("SQL port of the scratch MatrixOne (its launch configuration's).", "integer",
                      minimum=1, maximum=65535, default=6001),
            "passwordSecretRef": secret_key_ref("Secret holding the password (default: MatrixOne's initial "
                                                "root password 111).", "password"),
        }),
        "readOnlyCredentialsSecretRef": s3_keys_ref(
            "S3 keys of the checker container, which runs beside the restored MatrixOne and only reads the "
            "backup's catalog from the repository: give a key that can only read the repository (default: the "
            "storage's keys). The restore container keeps the storage's keys (it takes a lock in the repository)."),
    }, [], **{"x-kubernetes-validations": [
        {"rule": "(has(self.backupName) ? 1 : 0) + (has(self.backupID) ? 1 : 0) + (has(self.source) ? 1 : 0) == 1",
         "message": "set exactly one of backupName, backupID or source"},
        {"rule": "!has(self.backupID) || has(self.storageRef)", "message": "backupID needs storageRef"},
        {"rule": "self == oldSelf", "message": "the spec of a MORestoreDrill is immutable"},
    ]})
    check = obj("The outcome of one check.", {
        "name": s("What was checked: restore, server answers, databases, tables, rows <db>.<table>, query N."),
        "ok": s("Whether it passed.", "boolean"),
        "detail": s("The reason, or what was found."),
        "expected": s("The expected value (user queries and row counts)."),
        "got": s("The value found."),
        "warning": s("Passed, but a difference was seen that cannot be told from writes after a cold "
                     "backup's catalog was read.", "boolean"),
    })
    props = common_run_status(["Pending", "Running", "Completed", "Failed"])
    props.update({
        "backupName": s("The MOBackup drilled, if any."),
        "backupKind": s("online or cold."),
        "source": s("Source of the drilled backup."),
        "storage": s("MOBackupStorage the backup was read from."),
        "scratchClaim": s("The scratch PVC (deleted when the drill ends)."),
        "hostname": s("Host name the scratch MatrixOne ran under."),
        "checks": {"type": "array", "description": "Each check's outcome.", "items": check},
        "restoreSeconds": s("Seconds the restore into the scratch volume took.", "number"),
        "startSeconds": s("Seconds until the scratch MatrixOne answered SQL.", "number"),
        "checkSeconds": s("Seconds the checks took.", "number"),
        "restoredBytes": s("Bytes restored.", "integer"),
        "moVersion": s("Version of the scratch MatrixOne (select version())."),
        "cleanedUp": s("Every scratch object (Job, pod, PVC) is deleted.", "boolean"),
    })
    cols = [column("Phase", ".status.phase"), column("Backup ID", ".status.backupID"),
            column("Reason", ".status.reason"), column("Duration", ".status.duration"), AGE,
            column("MatrixOne", ".status.moVersion", priority=1), column("Message", ".status.message", priority=1)]
    return crd("MORestoreDrill", "morestoredrills", ["modrill"], spec, obj("Observed state of the drill.", props),
               cols, "MORestoreDrill restores a backup into a scratch volume, starts a scratch MatrixOne on it, "
                     "checks what it serves, and deletes every scratch object.")


# ------------------------------------------------------------------ point-in-time recovery (issue 19)

RFC3339 = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?([Zz]|[+-][0-9]{2}:[0-9]{2})$"
PITR_RANGE = ("MatrixOne keeps the history of a cluster PITR's range from garbage collection: the data directory "
              "grows by what the range's writes and deletes leave behind (docs/operations.md).")


def pitr_window_schema(what: str) -> Schema:
    return obj(f"Point-in-time recovery for {what}: before the copy, the operator makes sure a cluster-level PITR "
               "covers at least `window` (creating mobackup_<source> when MatrixOne has none, lengthening the "
               "existing one when shorter; never shortening or dropping a PITR). Needs source.sql (a sys-account "
               "user; a MatrixOneCluster's own endpoint) and, for table data in S3, parallelPods 1. Cold backups "
               "(Stop, Snapshot, None) carry the history that a restore to a time needs; Online backups take it too "
               "(the objects of the data volume, or of the cluster's SHARED S3 prefix, that MatrixOne's BACKUP leaves "
               "out). " + PITR_RANGE, {
                   "window": s("How far back a restore can go, e.g. 7d, 36h (s, m, h, d, w; MatrixOne's range is "
                               "rounded up to whole hours, days, months or years, at most 100 of them).",
                               pattern=DURATION, maxLength=32),
               }, ["window"])


PITR_BACKUP_RULES = [
    {"rule": "!has(self.pointInTime) || has(self.source.sql) || has(self.source.cluster)",
     "message": "pointInTime needs source.sql (or a MatrixOneCluster, whose endpoint is used)"},
    {"rule": "!has(self.pointInTime) || has(self.source.pvc) || !has(self.parallelPods) || self.parallelPods == 1",
     "message": "pointInTime with table data in S3 needs parallelPods 1 (a run staged for shards takes no history)"},
]


def backup_pitr_status() -> dict[str, Schema]:
    window = obj("A cluster-level PITR as SHOW PITR listed it before the copy.", {
        "name": s("Name of the PITR."), "created": s("When it was created (UTC).", format="date-time"),
        "modified": s("When it was last changed (UTC).", format="date-time"),
        "value": s("Its range: value.", "integer"), "unit": s("Its range: unit (h, d, mo, y)."),
    })
    return {
        "recoverableFrom": s("The earliest instant a MORestore with pointInTime can bring this backup to (RFC 3339): "
                             "max(PITR created, backupTS - range). Empty when the backup holds no PITR history "
                             "(see the PointInTimeRecoverable condition) or recorded no PITR.",
                             format="date-time"),
        "recoverableTo": s("The newest such instant: the backup's backupTS (empty as recoverableFrom).",
                           format="date-time"),
        "pointInTime": obj("The PITR windows read through source.sql before the copy (recorded in the backup's "
                           "manifest, extra.pitr), and what spec.pointInTime.window made happen.", {
            "history": s("Whether the copy holds MatrixOne's PITR history (a cold copy of the whole data "
                         "directory does; MatrixOne's BACKUP output alone does not: an Online backup with a "
                         "PITR takes the objects it leaves out too, and the Job's record then says true).",
                         "boolean"),
            "ensured": s("What was done for spec.pointInTime.window: created, lengthened or kept <PITR> (<range>)."),
            "windows": {"type": "array", "description": "The cluster PITRs present.", "items": window},
            "reason": s("Why a backup of this kind holds no history."),
            "error": s("Why the PITRs could not be listed (a MatrixOne without PITR, a non-sys user)."),
            "readAt": s("When they were read.", format="date-time"),
        }),
    }


RESTORE_POINT_IN_TIME = s(
    "Restore to this instant (RFC 3339 with a zone, e.g. 2026-12-01T10:00:00Z) instead of the backup's own "
    "moment: the backup is restored in place as usual, the workload scaled back, then, once MatrixOne answers "
    "through sqlCheck (whose user must be a sys-account user such as root), a Job runs RESTORE CLUSTER FROM "
    "PITR to the instant, then the SQL check. With backupName that backup (it must hold the instant); without, "
    "the Completed MOBackups of the target's volume (in storageRef, when set) whose recoverable interval "
    "holds it, the one with the earliest backupTS. A time in the future, after every backup's backupTS, before "
    "every window, a backup without PITR history or a MatrixOne without PITR fail the restore before anything is "
    "touched, naming the recoverable intervals. Needs sqlCheck, unless with scope. Table data in S3 "
    "(target.cluster or sharedStorage): the objects are restored into the prefix and the Job waits for the "
    "cluster, started on them (a MatrixOneCluster through its own spec), up to sqlCheck.timeoutSeconds; candidates "
    "without backupName are the MOBackups of the same prefix. With scope: the scratch MatrixOne is brought to the "
    "instant (RESTORE CLUSTER FROM PITR on the scratch, never the live server) before the tables are copied, so "
    "they come back as they were then; without backupName the backup is chosen among the Completed MOBackups whose "
    "source.sql is target.sql's host and port (in storageRef, when set); the names are checked on the scratch's "
    "tables as of the instant.", pattern=RFC3339, maxLength=64)

PITR_RESTORE_RULES = [
    {"rule": "has(self.pointInTime) ? !has(self.backupID) : has(self.backupName) != has(self.backupID)",
     "message": "set exactly one of backupName or backupID (with pointInTime: backupName or neither)"},
    {"rule": "!has(self.pointInTime) || has(self.scope) || has(self.sqlCheck)",
     "message": "pointInTime needs sqlCheck (the PITR restore runs through it), or scope"},
    {"rule": "!has(self.pointInTime) || !has(self.parallelPods) || self.parallelPods == 1",
     "message": "pointInTime restores in one pod (parallelPods 1)"},
]


def restore_pitr_status() -> Schema:
    return obj("The restore to a point in time (spec.pointInTime).", {
        "time": s("The instant restored to (UTC).", format="date-time"),
        "backupName": s("The MOBackup it was restored from (chosen by the operator without spec.backupName)."),
        "recoverableFrom": s("That backup's recoverable interval: from.", format="date-time"),
        "recoverableTo": s("That backup's recoverable interval: to.", format="date-time"),
        "jobName": s("The Job running RESTORE CLUSTER FROM PITR."),
        "pitr": s("The PITR MatrixOne restored from."),
        "pitrLengthened": s("The PITR's range was lengthened first (MatrixOne counts it from its own clock).",
                            "boolean"),
        "serverTime": s("MatrixOne's current_timestamp(6) right after the PITR restore (its own clock and zone)."),
        "zoneOffsetMinutes": s("UTC offset of MatrixOne's process zone, in which the instant was given to it.",
                               "integer"),
        "pitrSeconds": s("Seconds RESTORE CLUSTER FROM PITR took.", "number"),
    })


ALL = {
    "mobackupstorages.yaml": storage_crd,
    "mobackups.yaml": backup_crd,
    "morestores.yaml": restore_crd,
    "mobackupschedules.yaml": schedule_crd,
    "morestoredrills.yaml": drill_crd,
}

HEADER = ("# Generated by `python -m mobackup.k8s.crdgen crds/` (operator/mobackup/k8s/crdgen.py). "
          "Do not edit.\n")


def render(name: str) -> str:
    return HEADER + yaml.safe_dump(copy.deepcopy(ALL[name]()), sort_keys=False, width=110)


def write(out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name in ALL:
        path = out_dir / name
        path.write_text(render(name))
        written.append(path)
    return written


if __name__ == "__main__":
    for p in write(Path(sys.argv[1] if len(sys.argv) > 1 else "crds")):
        print(p)
