"""Credentials of Azure and GCS stores, from their standard environment variables and `--storage-option`.

The option names are those of LanceDB's object store (object_store's `AzureConfigKey`/`GoogleConfigKey`),
so the same dict goes to LanceDB and, through `mvh.store.sidecar`, to pyarrow's filesystems. Store URIs are
parsed in `mvh.store.location`, which calls these with the parts it parsed.
"""

from __future__ import annotations

from collections.abc import Mapping

from mvh.errors import UsageError

# Azure environment variables -> option names (a later line wins: the *_NAME/_KEY forms over the az CLI's)
AZURE_ENV = {
    "AZURE_STORAGE_ACCOUNT": "azure_storage_account_name",
    "AZURE_STORAGE_ACCOUNT_NAME": "azure_storage_account_name",
    "AZURE_STORAGE_KEY": "azure_storage_account_key",
    "AZURE_STORAGE_ACCOUNT_KEY": "azure_storage_account_key",
    "AZURE_STORAGE_SAS_TOKEN": "azure_storage_sas_token",
    "AZURE_STORAGE_ENDPOINT": "azure_storage_endpoint",
    "AZURE_CLIENT_ID": "azure_client_id",
    "AZURE_CLIENT_SECRET": "azure_client_secret",
    "AZURE_TENANT_ID": "azure_tenant_id",
    "AZURE_STORAGE_USE_EMULATOR": "azure_storage_use_emulator",
    "AZURITE_BLOB_STORAGE_URL": "azurite_blob_storage_url",
}
AZURE_CONNECTION_STRING = "AZURE_STORAGE_CONNECTION_STRING"
# object_store's other spellings of those options -> the one name read here and by the sidecar filesystem
_AZURE_ALIASES = {
    alias: name
    for name, aliases in {
        "azure_storage_account_name": "account_name",
        "azure_storage_account_key": "account_key access_key master_key azure_storage_access_key "
        "azure_storage_master_key",
        "azure_storage_sas_token": "sas_token sas_key azure_storage_sas_key",
        "azure_storage_endpoint": "endpoint azure_endpoint",
        "azure_storage_use_emulator": "use_emulator",
        "azure_client_id": "client_id azure_storage_client_id",
        "azure_client_secret": "client_secret azure_storage_client_secret",
        "azure_tenant_id": "tenant_id azure_storage_tenant_id",
    }.items()
    for alias in aliases.split()
}
# connection-string fields -> option names (the queue, table and file endpoints are not the blob service's)
_AZURE_CONNECTION = {
    "accountname": "azure_storage_account_name",
    "accountkey": "azure_storage_account_key",
    "sharedaccesssignature": "azure_storage_sas_token",
    "blobendpoint": "azure_storage_endpoint",
    "usedevelopmentstorage": "azure_storage_use_emulator",
}
# Azurite's well-known account and key, published by Microsoft for the emulator only; LanceDB's object store
# uses the same pair when AZURE_STORAGE_USE_EMULATOR is set without credentials.
EMULATOR_ACCOUNT = "devstoreaccount1"
_EMULATOR_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
_EMULATOR_URL = "http://127.0.0.1:10000"  # object_store's default for AZURITE_BLOB_STORAGE_URL
# Google environment variables -> option names
GOOGLE_ENV = {
    "GOOGLE_SERVICE_ACCOUNT": "google_service_account",
    "GOOGLE_SERVICE_ACCOUNT_PATH": "google_service_account",
    "GOOGLE_SERVICE_ACCOUNT_KEY": "google_service_account_key",
    "GOOGLE_APPLICATION_CREDENTIALS": "google_application_credentials",
}


def connection_string_options(text: str, *, strict: bool = True) -> dict[str, str]:
    """`AccountName=..;AccountKey=..;BlobEndpoint=..` (an Azure connection string) -> option names."""
    fields: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in text.split(";"))):
        key, sep, value = part.partition("=")
        if not sep and strict:
            raise UsageError(
                f"{AZURE_CONNECTION_STRING}: {key!r} is not KEY=VALUE; copy the string from the portal"
            )
        fields[key.strip().lower()] = value.strip()
    options = {_AZURE_CONNECTION[k]: v for k, v in fields.items() if k in _AZURE_CONNECTION}
    suffix = fields.get("endpointsuffix", "core.windows.net")
    if "blobendpoint" not in fields and suffix != "core.windows.net" and "accountname" in fields:
        scheme = fields.get("defaultendpointsprotocol", "https")
        options["azure_storage_endpoint"] = f"{scheme}://{fields['accountname']}.blob.{suffix}"
    return options


def azure_options(account: str | None, given: Mapping[str, str], env: Mapping[str, str]) -> dict[str, str]:
    """Options of an Azure store: connection string < AZURE_* variables < the URI's account < `given`."""
    options = connection_string_options(env.get(AZURE_CONNECTION_STRING, ""))
    options.update({key: env[var] for var, key in AZURE_ENV.items() if env.get(var)})
    if account:
        options["azure_storage_account_name"] = account
    options.update({_AZURE_ALIASES.get(k, k): v for k, v in given.items()})
    if options.get("azure_storage_sas_token", "").startswith("?"):
        options["azure_storage_sas_token"] = options["azure_storage_sas_token"][1:]
    url = options.pop("azurite_blob_storage_url", "") or _EMULATOR_URL
    if options.get("azure_storage_use_emulator", "").lower() in ("true", "1", "yes"):
        name = options.setdefault("azure_storage_account_name", EMULATOR_ACCOUNT)
        if name == EMULATOR_ACCOUNT and not options.get("azure_storage_sas_token"):
            options.setdefault("azure_storage_account_key", _EMULATOR_KEY)
        options["azure_storage_endpoint"] = f"{url.rstrip('/')}/{name}"
        # the endpoint is now explicit; LanceDB's emulator mode would read its URL from the process
        # environment only and ignore it, so it is switched off (the pyarrow side reads the same endpoint)
        options["azure_storage_use_emulator"] = "false"
    return options


def google_options(given: Mapping[str, str], env: Mapping[str, str]) -> dict[str, str]:
    """Options of a GCS store: GOOGLE_* variables < `given`."""
    return {**{key: env[var] for var, key in GOOGLE_ENV.items() if env.get(var)}, **given}


def environment_secrets(env: Mapping[str, str]) -> dict[str, str]:
    """The Azure and Google credentials in `env`, by option name (a connection string whole and in parts)."""
    found = {name: env[var] for var, name in {**AZURE_ENV, **GOOGLE_ENV}.items() if env.get(var)}
    connection = env.get(AZURE_CONNECTION_STRING, "")
    if connection:
        found.update(connection_string_options(connection, strict=False))
        found["azure_storage_connection_string"] = connection
    return found
