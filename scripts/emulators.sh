#!/usr/bin/env bash
# Start the object-storage emulators on loopback, run a command with the
# environment pointing at them, then stop them:
#   S3:         moto server (PyPI)      s3://audience-test   on 127.0.0.1:$S3_PORT
#   Azure Blob: Azurite (npm)           az://audience-test   on 127.0.0.1:$AZ_PORT
# Also a Python with pyarrow, the independent reader the export tests compare with.
#
# Installs into $AUDIENCE_EMULATORS (default ~/.cache/audience/emulators) once.
# GCS: no emulator installable here accepts object_store's XML-API writes;
# GCS is covered by configuration and URL tests (see docs/exports.md).
#
#   scripts/emulators.sh cargo nextest run -E 'test(export_)'
set -euo pipefail

EMU="${AUDIENCE_EMULATORS:-$HOME/.cache/audience/emulators}"
S3_PORT="${AUDIENCE_S3_PORT:-5055}"
AZ_PORT="${AUDIENCE_AZ_PORT:-10000}"
mkdir -p "$EMU"

if [ ! -x "$EMU/venv/bin/moto_server" ] || ! "$EMU/venv/bin/python" -c 'import pyarrow, boto3, azure.storage.blob' 2>/dev/null; then
    echo "emulators: installing moto, pyarrow, boto3, azure-storage-blob into $EMU/venv" >&2
    python3 -m venv "$EMU/venv"
    "$EMU/venv/bin/pip" install -q 'moto[server]==5.*' 'pyarrow>=15' boto3 azure-storage-blob
fi
if [ ! -x "$EMU/azurite/node_modules/.bin/azurite-blob" ]; then
    echo "emulators: installing Azurite 3 into $EMU/azurite" >&2
    mkdir -p "$EMU/azurite"
    (cd "$EMU/azurite" && { [ -f package.json ] || npm init -y >/dev/null; } && npm install -s azurite@3)
fi

LOGS="$(mktemp -d "${TMPDIR:-/tmp}/audience-emulators.XXXXXX")"
"$EMU/venv/bin/moto_server" -H 127.0.0.1 -p "$S3_PORT" >"$LOGS/moto.log" 2>&1 &
MOTO_PID=$!
"$EMU/azurite/node_modules/.bin/azurite-blob" --blobHost 127.0.0.1 --blobPort "$AZ_PORT" \
    --inMemoryPersistence --skipApiVersionCheck --loose --silent >"$LOGS/azurite.log" 2>&1 &
AZ_PID=$!
# The emulators' logs are kept when the command fails, for a look; else removed.
cleanup() {
    local status=$?
    kill "$MOTO_PID" "$AZ_PID" 2>/dev/null || true
    wait "$MOTO_PID" "$AZ_PID" 2>/dev/null || true
    if [ "$status" -eq 0 ]; then
        rm -rf "$LOGS"
    else
        echo "emulators: their logs are in $LOGS" >&2
    fi
}
trap cleanup EXIT

up() { # port name log
    for _ in $(seq 150); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
        sleep 0.2
    done
    echo "emulators: $2 did not start on 127.0.0.1:$1; its log:" >&2
    cat "$3" >&2
    exit 2
}
up "$S3_PORT" moto "$LOGS/moto.log"
up "$AZ_PORT" Azurite "$LOGS/azurite.log"

# The variables object_store's builders read (AmazonS3Builder::from_env,
# MicrosoftAzureBuilder::from_env). Test credentials only: emulators accept any.
export AWS_ENDPOINT="http://127.0.0.1:$S3_PORT" AWS_ALLOW_HTTP=true \
    AWS_ACCESS_KEY_ID=audience-test AWS_SECRET_ACCESS_KEY=audience-test-secret AWS_REGION=us-east-1
export AZURE_STORAGE_USE_EMULATOR=true AZURITE_BLOB_STORAGE_URL="http://127.0.0.1:$AZ_PORT" \
    AZURE_STORAGE_ACCOUNT_NAME=devstoreaccount1
"$EMU/venv/bin/python" - "$S3_PORT" "$AZ_PORT" <<'PY'
import sys
import boto3
from azure.storage.blob import BlobServiceClient
s3, az = sys.argv[1], sys.argv[2]
boto3.client("s3", endpoint_url=f"http://127.0.0.1:{s3}", region_name="us-east-1").create_bucket(Bucket="audience-test")
# Azurite's well-known development account key (public, emulator only).
key = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
BlobServiceClient.from_connection_string(
    "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;"
    f"AccountKey={key};BlobEndpoint=http://127.0.0.1:{az}/devstoreaccount1;"
).create_container("audience-test")
PY
export AUDIENCE_TEST_S3_URL="s3://audience-test" AUDIENCE_TEST_AZ_URL="az://audience-test"
export AUDIENCE_TEST_PYTHON="$EMU/venv/bin/python"
echo "emulators: S3 (moto) on 127.0.0.1:$S3_PORT, Azure Blob (Azurite) on 127.0.0.1:$AZ_PORT" >&2

"$@"
