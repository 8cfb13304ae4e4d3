"""Secrets of the namespace reach no endpoint their owner did not agree to (issue 18, item 8).

Whoever may create a mobackup resource names a Secret and an endpoint; the operator then sent the
Secret there (an S3 key id to the storage's endpoint, a SQL password to `source.sql.host`). Now a
Secret is used only if labelled `mobackup.io/credentials: "true"`, each way a resource names one, and
an S3 storage without keys does not borrow the operator's own identity unless its bucket is allowed.
One reconcile pass of each kind against an in-memory API (the same as test_storage_overlap.py); the
storage check end to end with the real API server is in test_e2e_bad_input.py.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
from test_storage_overlap import NS, SECRET, FakeKube, obj, storage

from mobackup.k8s import controller, drill, jobs
from mobackup.k8s import storage as storage_mod
from mobackup.k8s.models import parse_storage

# The same keys as SECRET, without the owner's consent.
VICTIM = {**copy.deepcopy(SECRET), "metadata": {"name": "victim"}}
S3_STORAGE = storage({"s3": {"bucket": "bkt", "endpoint": "http://attacker.example:9000",
                             "credentialsSecretRef": {"name": "k"}}})


def refused(kube: FakeKube, run: dict[str, Any]) -> str:
    st = run.get("status") or {}
    assert (st.get("phase"), st.get("reason")) == ("Failed", "SecretNotOptedIn"), st
    assert "SecretNotOptedIn" in kube.warnings() and kube.made() == [], kube.calls
    assert "label secret victim mobackup.io/credentials=true" in st["message"]
    return str(st["message"])


def test_a_storage_naming_an_unlabelled_secret_is_unavailable() -> None:
    kube = FakeKube(VICTIM)
    spec = parse_storage({"s3": {"bucket": "bkt", "endpoint": "http://attacker.example:9000",
                                 "credentialsSecretRef": {"name": "victim"}}})
    result = storage_mod.check(kube, NS, spec)  # type: ignore[arg-type]
    assert (result.available, result.reason) == (False, "SecretNotOptedIn"), result
    assert not [m for m, _ in kube.calls if m != "get_secret"]  # and nothing sent anywhere: no S3 call made


def test_an_encryption_key_or_ca_secret_needs_consent_too() -> None:
    kube = FakeKube(SECRET, VICTIM)
    for extra in ({"encryption": {"keySecretRef": {"name": "victim", "key": "password"}}},
                  {"s3": {"bucket": "bkt", "credentialsSecretRef": {"name": "k"},
                          "caBundle": {"secretRef": {"name": "victim", "key": "password"}}}}):
        spec = parse_storage({"s3": {"bucket": "bkt", "credentialsSecretRef": {"name": "k"}}, **extra})
        with pytest.raises(storage_mod.MissingInput) as err:
            storage_mod.read_credentials(kube, NS, spec)  # type: ignore[arg-type]
        assert err.value.reason == "SecretNotOptedIn"


def test_online_backup_with_an_unlabelled_password_secret() -> None:
    kube = FakeKube(S3_STORAGE, SECRET, VICTIM)
    source = {"sharedStorage": {"s3": {"path": "data/mo", "secretRef": {"name": "k"}}},
              "sql": {"host": "attacker.example", "passwordSecretRef": {"name": "victim"}}}
    run = obj("MOBackup", "b", {"source": source, "storageRef": {"name": "st"}})
    controller.reconcile_backup(controller.Ctx(kube), run)
    assert "source.sql" in refused(kube, run)


def test_restore_whose_shared_storage_secret_is_unlabelled() -> None:
    kube = FakeKube(S3_STORAGE, SECRET, VICTIM)
    shared = {"s3": {"path": "other/team", "endpoint": "http://attacker.example:9000", "secretRef": {"name": "victim"}}}
    run = obj("MORestore", "r", {"backupID": "x", "storageRef": {"name": "st"}, "target": {"sharedStorage": shared}})
    controller.reconcile_restore(controller.Ctx(kube), run)
    refused(kube, run)


@pytest.mark.parametrize("field", [
    {"readOnlyCredentialsSecretRef": {"name": "victim"}},  # sent to the storage's endpoint by the checker
    {"sql": {"passwordSecretRef": {"name": "victim"}}},
])
def test_drill_secrets_are_checked_before_anything_is_made(field: dict[str, Any]) -> None:
    """The drill's Secrets go straight into its Job (the operator never read them itself): the Job's
    own Secret references are checked, before the scratch PVC."""
    kube = FakeKube(S3_STORAGE, SECRET, VICTIM)
    run = obj("MORestoreDrill", "d", {"backupID": "x", "storageRef": {"name": "st"}, **field})
    drill.reconcile_drill(controller.Ctx(kube), run, drill.MatrixOneSettings())
    refused(kube, run)


def test_every_secret_a_pod_reads_is_found() -> None:
    pod = {"initContainers": [{"env": [{"name": "A", "valueFrom": {"secretKeyRef": {"name": "s1", "key": "k"}}}]}],
           "containers": [{"envFrom": [{"secretRef": {"name": "s2"}}],
                           "env": [{"name": "B", "value": "plain"}]}],
           "volumes": [{"secret": {"secretName": "s3"}},
                       {"projected": {"sources": [{"secret": {"name": "s4"}}, {"configMap": {"name": "c"}}]}}]}
    assert storage_mod.pod_secrets(pod) == {"s1", "s2", "s3", "s4"}


def test_no_ambient_identity_unless_the_bucket_is_allowed() -> None:
    spec = parse_storage({"s3": {"bucket": "team-bucket", "endpoint": "http://attacker.example:9000"}})
    kube = FakeKube()
    result = storage_mod.check(kube, NS, spec)  # type: ignore[arg-type]
    assert (result.available, result.reason) == (False, "AmbientCredentialsNotAllowed"), result
    assert "team-bucket" in result.message
    # Allowed by the installer: the keys are then the pod's own (none given here, so read_credentials
    # returns none and the check goes on to the endpoint).
    allowed = jobs.OperatorDefaults.from_env({"MOBACKUP_AMBIENT_CREDENTIAL_BUCKETS": '["team-*"]'})
    creds = storage_mod.read_credentials(kube, NS, spec, allowed.ambient_credential_buckets)  # type: ignore[arg-type]
    assert creds.access_key is None and creds.secret_key is None
    with pytest.raises(storage_mod.MissingInput):
        storage_mod.read_credentials(kube, NS, spec, ("other-*",))  # type: ignore[arg-type]


def test_a_backup_on_a_storage_without_keys_fails_before_any_job() -> None:
    kube = FakeKube(obj("MOBackupStorage", "st", {"s3": {"bucket": "bkt"}}, phase="Available"), SECRET)
    source = {"sharedStorage": {"s3": {"path": "data/mo", "secretRef": {"name": "k"}}},
              "sql": {"host": "mo", "passwordSecretRef": {"name": "k"}}}
    run = obj("MOBackup", "b", {"source": source, "storageRef": {"name": "st"}})
    controller.reconcile_backup(controller.Ctx(kube), run)
    st = run["status"]
    assert (st["phase"], st["reason"]) == ("Failed", "AmbientCredentialsNotAllowed"), st
    assert kube.made() == []


def test_secrets_the_installer_gives_every_job_need_no_label() -> None:
    """The chart's jobDefaults env/envFrom are the installer's choice, not a run's: not checked."""
    from test_storage_overlap import pvc

    kube = FakeKube(S3_STORAGE, SECRET, pvc("mo-data"))
    defaults = jobs.OperatorDefaults(job_defaults={"envFrom": [{"secretRef": {"name": "proxy-credentials"}}]})
    run = obj("MOBackup", "b", {"source": {"pvc": {"claimName": "mo-data"}}, "consistency": "None",
                                "storageRef": {"name": "st"}})
    controller.reconcile_backup(controller.Ctx(kube, defaults), run)
    assert run["status"]["phase"] == "Running" and "create_job" in kube.made(), run["status"]
