#!/usr/bin/env bats
# The shell contract: exit codes, one-line errors on stderr, --json that parses.
# Runs without root: nothing here touches a pool.

setup() {
  REPO="$(cd "$BATS_TEST_DIRNAME/../.." && pwd)"
  CLI="$REPO/bin/cocalc-ctl"
  TMP="$(mktemp -d)"
  printf 'btrfs_root: %s/pool\ndata_dir: %s/data\n' "$TMP" "$TMP" > "$TMP/config.yaml"
  export COCALC_CTL_CONFIG="$TMP/config.yaml"
}

teardown() {
  rm -rf "$TMP"
}

# run a command keeping stdout and stderr apart
split_run() {
  status=0
  "$@" >"$TMP/out" 2>"$TMP/err" || status=$?
}

@test "--version prints the version and exits 0" {
  split_run "$CLI" --version
  [ "$status" -eq 0 ]
  grep -Eq '^cocalc-ctl [0-9]+\.[0-9]+\.[0-9]+$' "$TMP/out"
}

@test "--help lists the nouns" {
  split_run "$CLI" --help
  [ "$status" -eq 0 ]
  for noun in config host hub project snapshot; do grep -q "^  $noun " "$TMP/out"; done
}

@test "an invalid project id is exit 2 with one line on stderr and nothing on stdout" {
  split_run "$CLI" project create ../etc
  [ "$status" -eq 2 ]
  [ "$(wc -l < "$TMP/err")" -eq 1 ]
  grep -q '^cocalc-ctl: error: invalid project id' "$TMP/err"
  [ ! -s "$TMP/out" ]
  [ ! -e "$TMP/data" ]
}

@test "an unknown command is a usage error (exit 2, one line)" {
  split_run "$CLI" project frobnicate
  [ "$status" -eq 2 ]
  [ "$(wc -l < "$TMP/err")" -eq 1 ]
}

@test "a missing pool is exit 5 and says how to fix it" {
  split_run "$CLI" project list
  [ "$status" -eq 5 ]
  grep -q 'host init' "$TMP/err"
  [ "$(wc -l < "$TMP/err")" -eq 1 ]
}

@test "a bad config value names the key and the file" {
  printf 'backup:\n  max_concurrent: many\n' > "$TMP/bad.yaml"
  split_run "$CLI" --config "$TMP/bad.yaml" config show
  [ "$status" -eq 2 ]
  grep -q 'backup.max_concurrent' "$TMP/err"
  grep -q "$TMP/bad.yaml" "$TMP/err"
}

@test "config show --json parses and redacts the hub password" {
  COCALC_CTL_HUB_DSN='postgresql://u:hunter2@db/hub' split_run "$CLI" config show --json
  [ "$status" -eq 0 ]
  python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); assert d["keys"]["hub_dsn"]["source"].startswith("env:")' "$TMP/out"
  ! grep -q hunter2 "$TMP/out"
}

@test "-v on an error does not change the exit code" {
  split_run "$CLI" -v snapshot list not-a-uuid
  [ "$status" -eq 2 ]
}
