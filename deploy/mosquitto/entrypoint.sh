#!/bin/sh
# The broker container's start: render mosquitto.conf, write the password file from the environment
# (MQTT_PASSWORD_<USER>=… → user <user>, lower case; the image keeps no password), then run mosquitto.
# TLS: CONFIG_DIR/tls/{ca.crt,server.crt,server.key} must be mounted (deploy/scripts/init-secrets.sh
# makes a private CA and a broker certificate for compose; the chart mounts a Secret).
set -eu
CONFIG_DIR="${CONFIG_DIR:-/etc/mosquitto/shuidian}"
RUN_DIR="${RUN_DIR:-/data/run}"
export MQTT_PORT="${MQTT_PORT:-1883}" MQTTS_PORT="${MQTTS_PORT:-8883}" DATA_DIR="${DATA_DIR:-/data}"
mkdir -p "$RUN_DIR"
: > "$RUN_DIR/passwd"
chmod 600 "$RUN_DIR/passwd"
env | sed -n 's/^MQTT_PASSWORD_\([A-Za-z0-9_]*\)=\(.*\)$/\1 \2/p' | while read -r user password; do
  mosquitto_passwd -b "$RUN_DIR/passwd" "$(echo "$user" | tr '[:upper:]' '[:lower:]')" "$password"
done
[ -s "$RUN_DIR/passwd" ] || { echo "mosquitto: no MQTT_PASSWORD_<USER> given: nobody could sign in" >&2; exit 78; }
cp "$CONFIG_DIR/acl" "$RUN_DIR/acl"
ln -sfn "$CONFIG_DIR/tls" "$RUN_DIR/tls"
sed -e "s|\${CONFIG_DIR}|$RUN_DIR|g" -e "s|\${MQTT_PORT}|$MQTT_PORT|g" -e "s|\${MQTTS_PORT}|$MQTTS_PORT|g" \
    -e "s|\${DATA_DIR}|$DATA_DIR|g" "$CONFIG_DIR/mosquitto.conf" > "$RUN_DIR/mosquitto.conf"
# Stay the user we were started as (mosquitto would otherwise switch from root to "mosquitto").
echo "user $(id -un)" >> "$RUN_DIR/mosquitto.conf"
exec mosquitto -c "$RUN_DIR/mosquitto.conf"
