#!/bin/sh
# Container entry point: exec the image's service ($SERVICE), so that it is PID 1 and receives
# SIGTERM itself; `migrate` runs its schema migrations once and exits (the upgrade's one-off job).
#
# SHUIDIAN_ENVIRONMENT (prod in the image) becomes the service's own <PREFIX>_ENVIRONMENT unless that is
# set; <PREFIX>_HTTP_HOST defaults to 0.0.0.0 (a container's loopback is its own).
set -eu
case "$SERVICE" in
  collector|billing|control|alarm|gateway|insights)
    prefix=$(echo "$SERVICE" | tr '[:lower:]' '[:upper:]')
    eval "export ${prefix}_ENVIRONMENT=\"\${${prefix}_ENVIRONMENT:-\$SHUIDIAN_ENVIRONMENT}\""
    eval "export ${prefix}_HTTP_HOST=\"\${${prefix}_HTTP_HOST:-0.0.0.0}\""
    # The web console and tenant portal, when the image was built with web/dist (only the gateway's has it).
    if [ -d /opt/app/web ]; then export GATEWAY_WEB_ROOT="${GATEWAY_WEB_ROOT:-/opt/app/web}"; fi
    # `migrate`: the upgrade's one-off job (migrate.py): the schema to this image's revision, then exit.
    if [ "${1:-}" = migrate ]; then exec python3 /opt/app/bin/migrate.py; fi
    exec python3 -m "shuidian_$SERVICE" "$@"
    ;;
  simulator)
    # Dev/test only: the demo estate (generated on first start into the data volume) on fixed ports.
    estate="${SIMULATOR_ESTATE:-/data/estate.json}"
    [ -s "$estate" ] || python3 /opt/app/bin/simulator_estate.py "$estate"
    exec python3 -m shuidian_simulator --estate "$estate" --control-host "${SIMULATOR_CONTROL_HOST:-0.0.0.0}" \
      --control-port "${SIMULATOR_CONTROL_PORT:-8090}" --ports-file /data/simulator-ports.json "$@"
    ;;
  *)
    echo "entrypoint: unknown SERVICE '$SERVICE'" >&2
    exit 64
    ;;
esac
