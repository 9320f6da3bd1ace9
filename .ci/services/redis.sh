# Sourced by .ci/test: Redis 7 from Debian's packages, a private server on a free port.
if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1; then
  echo "redis-server not found: installing it from Debian's packages"
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server redis-tools >/dev/null
fi
if [ -z "${REDIS_URL:-}" ]; then
  redis_port="$(free_port)"
  echo "starting redis-server on 127.0.0.1:$redis_port (no persistence)"
  redis-server --bind 127.0.0.1 --port "$redis_port" --save "" --appendonly no \
    --dir "$CI_TMP" --logfile "$CI_TMP/redis.log" &
  CI_PIDS="$CI_PIDS $!"
  for _ in $(seq 100); do
    redis-cli -h 127.0.0.1 -p "$redis_port" ping >/dev/null 2>&1 && break
    sleep 0.1
  done
  export REDIS_URL="redis://127.0.0.1:$redis_port"
fi
