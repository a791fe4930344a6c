#!/usr/bin/env bash
# run.sh - from a fresh Debian 12 machine to a running flicker with the
# examples deployed: installs the packages, builds, starts `flicker up` on
# 127.0.0.1:9000 with its data in ./.flicker, deploys examples/*, invokes
# each once, prints how to call them, then stays in the foreground until
# Ctrl-C (which stops flicker cleanly).
#
# Environment: FLICKER_LISTEN (default 127.0.0.1:9000), FLICKER_DATA
# (default ./.flicker), FLICKER_ISOLATION (sandbox, the default, or microvm:
# then the microVM guest is built first, ~8 minutes the first time).  Credentials: FLICKER_ACCESS_KEY_ID and
# FLICKER_SECRET_ACCESS_KEY if set, else the ones flicker writes to
# DATA/credentials (AWS shared-credentials format) on first start.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
LISTEN=${FLICKER_LISTEN:-127.0.0.1:9000}
DATA=${FLICKER_DATA:-$ROOT/.flicker}
ENDPOINT="http://$LISTEN"

echo "run.sh: installing dependencies"
bash scripts/install-deps.sh
echo "run.sh: building"
make -j2 >/dev/null
ISOLATION=${FLICKER_ISOLATION:-sandbox}
if [ "$ISOLATION" = microvm ]; then
    echo "run.sh: building the microVM guest (kernel, agent, root images; cached)"
    make -j2 guest >/dev/null
fi

mkdir -p "$DATA"
echo "run.sh: starting flicker on $LISTEN (data in $DATA, log in $DATA/flicker.log)"
build/flicker up --listen "$LISTEN" --data "$DATA" --isolation "$ISOLATION" >>"$DATA/flicker.log" 2>&1 &
pid=$!
stop() {
    echo
    echo "run.sh: stopping flicker"
    kill -TERM "$pid" 2>/dev/null || true
    wait "$pid" || true
    exit 0
}
trap stop INT TERM

for _ in $(seq 1 150); do
    if curl -fsS "$ENDPOINT/flicker/health" >/dev/null 2>&1; then
        break
    fi
    if ! kill -0 "$pid" 2>/dev/null; then
        echo "run.sh: flicker exited; last log lines:" >&2
        tail -n 30 "$DATA/flicker.log" >&2
        exit 1
    fi
    sleep 0.2
done
curl -fsS "$ENDPOINT/flicker/health" >/dev/null || { echo "run.sh: flicker not ready" >&2; stop; }

# Credentials for the clients.
if [ -n "${FLICKER_ACCESS_KEY_ID:-}" ] && [ -n "${FLICKER_SECRET_ACCESS_KEY:-}" ]; then
    export AWS_ACCESS_KEY_ID=$FLICKER_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY=$FLICKER_SECRET_ACCESS_KEY
    creds_hint="the FLICKER_ACCESS_KEY_ID / FLICKER_SECRET_ACCESS_KEY you set"
elif [ -f "$DATA/credentials" ]; then
    export AWS_SHARED_CREDENTIALS_FILE=$DATA/credentials
    creds_hint="AWS_SHARED_CREDENTIALS_FILE=$DATA/credentials"
else
    echo "run.sh: no credentials: $DATA/credentials is missing" >&2
    stop
fi
export AWS_DEFAULT_REGION=us-east-1 AWS_PAGER=""
aws=(/usr/bin/aws --endpoint-url "$ENDPOINT" --output json)

# Deploy every example: examples/NAME/flicker.runtime says "RUNTIME HANDLER".
work=$(mktemp -d)
for dir in examples/*/; do
    name=$(basename "$dir")
    [ -f "$dir/flicker.runtime" ] || continue
    read -r runtime handler <"$dir/flicker.runtime"
    zipfile="$work/$name.zip"
    (cd "$dir" && zip -qr -X "$zipfile" . -x flicker.runtime)
    if "${aws[@]}" lambda get-function --function-name "$name" >/dev/null 2>&1; then
        "${aws[@]}" lambda update-function-code --function-name "$name" \
            --zip-file "fileb://$zipfile" >/dev/null
        "${aws[@]}" lambda wait function-updated-v2 --function-name "$name"
    else
        "${aws[@]}" lambda create-function --function-name "$name" --runtime "$runtime" \
            --handler "$handler" --role arn:aws:iam::000000000000:role/flicker \
            --zip-file "fileb://$zipfile" >/dev/null
        "${aws[@]}" lambda wait function-active-v2 --function-name "$name"
    fi
    "${aws[@]}" lambda invoke --function-name "$name" --cli-binary-format raw-in-base64-out \
        --payload '{"name":"flicker"}' "$work/$name.out" >/dev/null
    echo "deployed $name ($runtime): $(cat "$work/$name.out")"
done
rm -rf "$work"

cat <<EOF

flicker is running at $ENDPOINT (pid $pid).  Credentials: $creds_hint.

AWS CLI:
  export AWS_DEFAULT_REGION=us-east-1 ${AWS_SHARED_CREDENTIALS_FILE:+AWS_SHARED_CREDENTIALS_FILE=$DATA/credentials}
  aws --endpoint-url $ENDPOINT lambda list-functions
  aws --endpoint-url $ENDPOINT lambda invoke --function-name hello-python \\
      --cli-binary-format raw-in-base64-out --payload '{"name":"you"}' /dev/stdout

boto3:
  import boto3
  lam = boto3.client("lambda", endpoint_url="$ENDPOINT", region_name="us-east-1")
  print(lam.invoke(FunctionName="hello-node", Payload=b'{"name":"you"}')["Payload"].read())

flicker CLI:  FLICKER_ENDPOINT=$ENDPOINT build/flicker list | invoke NAME '{}' | logs NAME

Press Ctrl-C to stop.
EOF
wait "$pid"
