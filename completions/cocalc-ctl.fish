# fish completion for cocalc-ctl (generated from the CLI by scripts/regenerate; do not edit)

set -g __cocalc_ctl_subs 'cocalc-ctl:config' 'cocalc-ctl:doctor' 'cocalc-ctl:host' 'cocalc-ctl:hub' 'cocalc-ctl:keys' 'cocalc-ctl:metrics' 'cocalc-ctl:move' 'cocalc-ctl:project' 'cocalc-ctl:proxy' 'cocalc-ctl:rootfs' 'cocalc-ctl:snapshot' 'cocalc-ctl:sshpiper' 'cocalc-ctl:timers' 'cocalc-ctl config:show' 'cocalc-ctl host:init' 'cocalc-ctl host:status' 'cocalc-ctl host:teardown' 'cocalc-ctl hub:migrate' 'cocalc-ctl keys:broadcast' 'cocalc-ctl keys:ensure' 'cocalc-ctl keys:known-hosts' 'cocalc-ctl keys:peers' 'cocalc-ctl keys:register' 'cocalc-ctl keys:rotate' 'cocalc-ctl keys:show' 'cocalc-ctl keys:sync' 'cocalc-ctl keys:trust' 'cocalc-ctl keys:untrust' 'cocalc-ctl keys:watch' 'cocalc-ctl metrics:show' 'cocalc-ctl metrics:write' 'cocalc-ctl move:abort' 'cocalc-ctl move:cancel' 'cocalc-ctl move:cleanup' 'cocalc-ctl move:finalize' 'cocalc-ctl move:host-step' 'cocalc-ctl move:recv' 'cocalc-ctl move:send' 'cocalc-ctl move:start' 'cocalc-ctl move:status' 'cocalc-ctl move:worker' 'cocalc-ctl project:create' 'cocalc-ctl project:delete' 'cocalc-ctl project:list' 'cocalc-ctl project:show' 'cocalc-ctl project:start' 'cocalc-ctl project:status' 'cocalc-ctl project:stop' 'cocalc-ctl proxy:serve' 'cocalc-ctl rootfs:gc' 'cocalc-ctl rootfs:list' 'cocalc-ctl rootfs:mount' 'cocalc-ctl rootfs:pull' 'cocalc-ctl rootfs:resolve' 'cocalc-ctl rootfs:rm' 'cocalc-ctl rootfs:umount' 'cocalc-ctl snapshot:auto' 'cocalc-ctl snapshot:create' 'cocalc-ctl snapshot:delete' 'cocalc-ctl snapshot:list' 'cocalc-ctl snapshot:lock' 'cocalc-ctl snapshot:prune' 'cocalc-ctl snapshot:unlock' 'cocalc-ctl sshpiper:auth' 'cocalc-ctl sshpiper:authorized-keys' 'cocalc-ctl sshpiper:config' 'cocalc-ctl sshpiper:keys-refresh' 'cocalc-ctl sshpiper:receiver-users' 'cocalc-ctl sshpiper:serve' 'cocalc-ctl timers:cron' 'cocalc-ctl timers:install' 'cocalc-ctl timers:list' 'cocalc-ctl timers:remove'
set -g __cocalc_ctl_valopts '--bin' '--bwlimit' '--compress' '--concurrency' '--config' '--from' '--image' '--keep-daily' '--keep-frequent' '--keep-hourly' '--keep-monthly' '--keep-weekly' '--listen' '--loopback' '--max-size' '--mode' '--only' '--out' '--poll' '--quota' '--reason' '--role' '--seconds' '--snapshot' '--textfile-dir' '--to' '--unit-dir' '--user' '--user-unit-dir' '--which'

function __cocalc_ctl_path
    set -l cmdpath cocalc-ctl
    set -l skip 0
    for w in (commandline -opc)[2..-1]
        if test $skip = 1
            set skip 0
            continue
        end
        if contains -- $w $__cocalc_ctl_valopts
            set skip 1
            continue
        end
        string match -q -- '-*' $w; and continue
        if contains -- "$cmdpath:$w" $__cocalc_ctl_subs
            set cmdpath "$cmdpath $w"
        end
    end
    echo "$cmdpath"
end

complete -c cocalc-ctl -f
complete -c cocalc-ctl -n 'true' -l config -r -F -d 'Config file (default $COCALC_CTL_CONFIG or /etc/cocalc-ctl/config.yaml).'
complete -c cocalc-ctl -n 'true' -l json -d 'Print one JSON document (JSON lines for progress).'
complete -c cocalc-ctl -n 'true' -l dry-run -d 'Print the exact commands; change nothing.'
complete -c cocalc-ctl -n 'true' -s v -l verbose -d 'Log each command; tracebacks on errors.'
complete -c cocalc-ctl -n 'true' -s q -l quiet -d 'Only errors and requested output.'
complete -c cocalc-ctl -n 'true' -l version -d 'Print the version.'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl"' -a config -d 'Show the effective configuration.'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl"' -a doctor -d 'Check pool, programs, secrets, keys, hub, backup repo, time and free space; exit 1 on any '
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl"' -a host -d 'Set up, inspect and tear down this host\'s btrfs pool.'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl"' -a hub -d 'Hub PostgreSQL schema (projects, project_hosts, project_moves).'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl"' -a keys -d 'SSH keypairs of this host, registration in the hub, and trusted peers\' keys.'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl"' -a metrics -d 'Prometheus metrics for node_exporter\'s textfile collector.'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl"' -a move -d 'Move projects between hosts: send/recv/finalize/cleanup on hosts; start/status/cancel/work'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl"' -a project -d 'Create, list, inspect, delete, start and stop projects (btrfs subvolumes).'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl"' -a proxy -d 'HTTP/WebSocket reverse proxy to project servers.'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl"' -a rootfs -d 'Root filesystem images: resolve, pull into the local cache, overlay-mount per project.'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl"' -a snapshot -d 'Create, list, lock, delete and prune project snapshots.'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl"' -a sshpiper -d 'SSH auth hook: sshpiperd\'s REST endpoint, OpenSSH AuthorizedKeysCommand, managed keys, ssh'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl"' -a timers -d 'Install, list and remove the systemd timers and services (or print crontab lines).'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl"' -l config -r -F -d 'Config file (default $COCALC_CTL_CONFIG or /etc/cocalc-ctl/config.yaml).'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl"' -l json -d 'Print one JSON document (JSON lines for progress).'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl"' -l dry-run -d 'Print the exact commands; change nothing.'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl"' -s v -l verbose -d 'Log each command; tracebacks on errors.'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl"' -s q -l quiet -d 'Only errors and requested output.'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl"' -l version -d 'Print the version.'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl"' -s h -l help -d 'Show the help and exit.'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl config"' -a show -d 'Print every config key, its effective value and its source (secrets redacted).'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl config"' -s h -l help -d 'Show the help and exit.'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl config show"' -s h -l help -d 'Show the help and exit.'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl doctor"' -s h -l help -d 'Show the help and exit.'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl host"' -a init -d 'Create/mount the pool (with --loopback), enable quotas, create data and secrets dirs.'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl host"' -a status -d 'Pool size/used/free, quota state, project and snapshot counts.'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl host"' -a teardown -d 'Unmount and detach a loopback pool that `host init --loopback` made (refuses any other).'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl host"' -s h -l help -d 'Show the help and exit.'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl host init"' -l loopback -x -d 'Create a loopback btrfs pool of SIZE (e.g. 10G) when there is none.'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl host init"' -l image -r -F -d 'Image file for --loopback (default <data_dir>/pool.img).'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl host init"' -s h -l help -d 'Show the help and exit.'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl host status"' -s h -l help -d 'Show the help and exit.'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl host teardown"' -l delete-image -d 'Also delete the loopback image file.'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl host teardown"' -s h -l help -d 'Show the help and exit.'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl hub"' -a migrate -d 'Create or extend the hub tables (idempotent, versioned, never drops).'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl hub"' -s h -l help -d 'Show the help and exit.'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl hub migrate"' -s h -l help -d 'Show the help and exit.'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl keys"' -a broadcast -d 'Ask every `keys watch` to resync now (changes in the hub notify on their own).'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl keys"' -a ensure -d 'Create missing ed25519 keypairs (host-to-host, sshpiperd host key, sshpiper upstream) and '
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl keys"' -a known-hosts -d 'Pin every trusted peer\'s sshpiperd key for its ssh_server (`host` on port 22, `[host]:port'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl keys"' -a peers -d 'The trusted peers cached in host sqlite (what `keys sync` fetched).'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl keys"' -a register -d 'Upsert this host (id, name, ssh_server, heartbeat, public keys) into the hub; trust is unc'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl keys"' -a rotate -d 'Make a new key; the old one stays accepted as "previous" until `--finish`.'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl keys"' -a show -d 'Public keys and fingerprints (never a private key).'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl keys"' -a sync -d 'Copy every trusted peer\'s public keys from the hub into host sqlite; refresh known_hosts.'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl keys"' -a trust -d 'Hub admin: distribute HOST\'s keys to every host and accept it as a move peer.'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl keys"' -a untrust -d 'Hub admin: stop distributing HOST\'s keys; peers drop it on their next sync.'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl keys"' -a watch -d 'LISTEN for key changes in the hub and sync on each (reconnects with backoff).'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl keys"' -s h -l help -d 'Show the help and exit.'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl keys broadcast"' -s h -l help -d 'Show the help and exit.'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl keys ensure"' -s h -l help -d 'Show the help and exit.'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl keys known-hosts"' -l out -r -F -d 'Where to write (default <data_dir>/ssh/known_hosts; - for stdout).'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl keys known-hosts"' -s h -l help -d 'Show the help and exit.'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl keys peers"' -s h -l help -d 'Show the help and exit.'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl keys register"' -s h -l help -d 'Show the help and exit.'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl keys rotate"' -l which -x -d 'host (host-to-host), sshpiperd, or upstream.'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl keys rotate"' -l finish -d 'Remove the previous key (peers stop accepting it).'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl keys rotate"' -s h -l help -d 'Show the help and exit.'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl keys show"' -s h -l help -d 'Show the help and exit.'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl keys sync"' -s h -l help -d 'Show the help and exit.'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl keys trust"' -s h -l help -d 'Show the help and exit.'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl keys trust"' -F
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl keys untrust"' -s h -l help -d 'Show the help and exit.'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl keys untrust"' -F
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl keys watch"' -l seconds -x -d 'Stop after this long (default: forever).'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl keys watch"' -s h -l help -d 'Show the help and exit.'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl metrics"' -a show -d 'Print the metrics in the Prometheus text format instead of writing them.'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl metrics"' -a write -d 'Write backup ages, failed jobs, snapshot counts, pool usage and move states atomically.'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl metrics"' -s h -l help -d 'Show the help and exit.'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl metrics show"' -s h -l help -d 'Show the help and exit.'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl metrics write"' -l textfile-dir -r -F -a '(__fish_complete_directories)' -d 'Directory to write cocalc_ctl.prom into (default metrics.textfile_dir).'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl metrics write"' -s h -l help -d 'Show the help and exit.'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl move"' -a abort -d 'On a destination: delete received data, staged streams and a half-finalized project.'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl move"' -a cancel -d 'Cancel a move that has not reached finalizing; the worker then rolls back the destination.'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl move"' -a cleanup -d 'On the source: delete the moved project once the hub says the destination finalized.'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl move"' -a finalize -d 'Make the received snapshots the project here (idempotent; refuses an existing project).'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl move"' -a host-step -d 'The forced command for the hub\'s worker (ssh transport): runs one step from SSH_ORIGINAL_C'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl move"' -a recv -d 'The destination\'s forced command: runs the request in SSH_ORIGINAL_COMMAND (own small gram'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl move"' -a send -d 'Stop the project, snapshot it, send every snapshot (incrementally) to the destination.'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl move"' -a start -d 'Queue a move in the hub and return at once (a `move worker` carries it out).'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl move"' -a status -d 'Moves in the hub with state, attempt, bytes and reason.'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl move"' -a worker -d 'Advance queued moves (queued → preparing → sending → finalizing → done) under leases.'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl move"' -s h -l help -d 'Show the help and exit.'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl move abort"' -s h -l help -d 'Show the help and exit.'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl move abort"' -F
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl move cancel"' -s h -l help -d 'Show the help and exit.'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl move cancel"' -F
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl move cleanup"' -l force -d 'Delete without asking the hub for confirmation.'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl move cleanup"' -s h -l help -d 'Show the help and exit.'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl move cleanup"' -F
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl move finalize"' -s h -l help -d 'Show the help and exit.'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl move finalize"' -F
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl move host-step"' -s h -l help -d 'Show the help and exit.'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl move recv"' -l from -x -d 'The source host whose key runs this forced command.'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl move recv"' -s h -l help -d 'Show the help and exit.'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl move send"' -l to -x -d 'The destination\'s move receiver (btrfs-<this-host-uuid>@HOST:PORT).'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl move send"' -l mode -x -d 'pipe: stream; staged: files + rsync --partial (default move.mode).'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl move send"' -l compress -x -d 'Compress the streams (default move.compress).'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl move send"' -l bwlimit -x -d 'Bytes/s, e.g. 50M.'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl move send"' -l snapshot -x -d 'Name of the final snapshot (default move-<UTC time>; reused when it exists, so a rerun res'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl move send"' -s h -l help -d 'Show the help and exit.'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl move send"' -F
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl move start"' -l to -x -d 'Destination host uuid or name (default: a trusted, active host).'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl move start"' -l mode -x -d 'Transfer mode.'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl move start"' -l compress -x -d 'Stream compression.'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl move start"' -s h -l help -d 'Show the help and exit.'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl move start"' -F
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl move status"' -l watch -d 'Refresh every second until every move is finished.'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl move status"' -s h -l help -d 'Show the help and exit.'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl move status"' -F
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl move worker"' -l once -d 'Exit when no move is claimable.'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl move worker"' -l concurrency -x -d 'Moves handled at once.'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl move worker"' -l poll -x -d 'Idle poll interval.'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl move worker"' -s h -l help -d 'Show the help and exit.'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl project"' -a create -d 'Create the subvolume project-<uuid> with its .snapshots/ and qgroup.'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl project"' -a delete -d 'Delete a project: its snapshots first, then the subvolume, persist store and state row.'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl project"' -a list -d 'Every project on this host with state, size and snapshot count.'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl project"' -a show -d 'Path, size (qgroups), quota, generation, snapshots and state of one project.'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl project"' -a start -d 'Resolve, pull and mount the root image, then run the project container with podman.'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl project"' -a status -d 'State, container, image, root mount and ports of one project.'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl project"' -a stop -d 'Remove the project container, unmount its root and clear its ports.'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl project"' -s h -l help -d 'Show the help and exit.'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl project create"' -l quota -x -d 'qgroup limit (e.g. 10G).'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl project create"' -s h -l help -d 'Show the help and exit.'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl project create"' -F
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl project delete"' -l force -d 'Delete even with locked snapshots or while running.'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl project delete"' -s h -l help -d 'Show the help and exit.'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl project delete"' -F
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl project list"' -s h -l help -d 'Show the help and exit.'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl project show"' -s h -l help -d 'Show the help and exit.'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl project show"' -F
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl project start"' -l image -x -d 'Use this image (default: resolve).'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl project start"' -s h -l help -d 'Show the help and exit.'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl project start"' -F
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl project status"' -s h -l help -d 'Show the help and exit.'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl project status"' -F
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl project stop"' -s h -l help -d 'Show the help and exit.'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl project stop"' -F
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl proxy"' -a serve -d 'Serve `/<project_id>/...` until SIGTERM/SIGINT; also /healthz and /metrics.'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl proxy"' -s h -l help -d 'Show the help and exit.'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl proxy serve"' -l mode -x -d 'host: route to this host\'s projects (sqlite); hub: route to each project\'s host (PostgreSQ'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl proxy serve"' -l listen -x -d 'Listen address (default: proxy.listen).'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl proxy serve"' -l access-log -l no-access-log -d 'One line per request on stderr (JSON lines with --json).'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl proxy serve"' -s h -l help -d 'Show the help and exit.'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl rootfs"' -a gc -d 'Remove cached images no project uses (oldest first) until the cache fits the budget.'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl rootfs"' -a list -d 'Cached images with size, pull time and the projects using them.'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl rootfs"' -a mount -d 'Mount the project\'s overlay root at <data_dir>/project-roots/<uuid> (pulls the image if mi'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl rootfs"' -a pull -d 'Pull an image and extract its filesystem into the cache (one pull per image at a time).'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl rootfs"' -a resolve -d 'Normalise the project\'s image (hub COALESCE(rootfs_image, compute_image)) and record it on'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl rootfs"' -a rm -d 'Remove one image from the cache (refused while a project has it mounted).'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl rootfs"' -a umount -d 'Unmount the project\'s overlay root (refused while the project runs).'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl rootfs"' -s h -l help -d 'Show the help and exit.'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl rootfs gc"' -l max-size -x -d 'Size budget (e.g. 20G); default rootfs.gc_max_size, else remove every unused image.'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl rootfs gc"' -s h -l help -d 'Show the help and exit.'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl rootfs list"' -s h -l help -d 'Show the help and exit.'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl rootfs mount"' -l image -x -d 'Use this image.'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl rootfs mount"' -l remount -d 'Switch a root mounted with another image.'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl rootfs mount"' -s h -l help -d 'Show the help and exit.'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl rootfs mount"' -F
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl rootfs pull"' -l force -d 'Pull and extract again even if cached.'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl rootfs pull"' -l keep -d 'Keep podman\'s copy of the image.'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl rootfs pull"' -s h -l help -d 'Show the help and exit.'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl rootfs pull"' -F
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl rootfs resolve"' -l image -x -d 'Use this image instead of asking the hub.'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl rootfs resolve"' -s h -l help -d 'Show the help and exit.'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl rootfs resolve"' -F
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl rootfs rm"' -s h -l help -d 'Show the help and exit.'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl rootfs rm"' -F
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl rootfs umount"' -s h -l help -d 'Show the help and exit.'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl rootfs umount"' -F
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl snapshot"' -a auto -d 'For the timer: snapshot projects whose generation advanced, then prune with the config\'s c'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl snapshot"' -a create -d 'Take a read-only snapshot .snapshots/NAME of the project.'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl snapshot"' -a delete -d 'Delete one snapshot (refused while it is locked).'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl snapshot"' -a list -d 'Snapshots with creation time, generation, sizes (qgroups) and lock state.'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl snapshot"' -a lock -d 'Protect a snapshot from delete and prune.'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl snapshot"' -a prune -d 'Delete timestamp-named snapshots outside the retention buckets (locked and newest kept).'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl snapshot"' -a unlock -d 'Remove a snapshot\'s lock.'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl snapshot"' -s h -l help -d 'Show the help and exit.'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl snapshot auto"' -s h -l help -d 'Show the help and exit.'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl snapshot auto"' -F
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl snapshot create"' -s h -l help -d 'Show the help and exit.'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl snapshot create"' -F
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl snapshot delete"' -s h -l help -d 'Show the help and exit.'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl snapshot delete"' -F
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl snapshot list"' -s h -l help -d 'Show the help and exit.'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl snapshot list"' -F
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl snapshot lock"' -l reason -x -d 'Why it is kept (stored in the lock file).'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl snapshot lock"' -s h -l help -d 'Show the help and exit.'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl snapshot lock"' -F
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl snapshot prune"' -l keep-frequent -x -d 'Keep the newest snapshot of each of the last N frequent buckets.'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl snapshot prune"' -l keep-hourly -x -d 'Keep the newest snapshot of each of the last N hourly buckets.'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl snapshot prune"' -l keep-daily -x -d 'Keep the newest snapshot of each of the last N daily buckets.'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl snapshot prune"' -l keep-weekly -x -d 'Keep the newest snapshot of each of the last N weekly buckets.'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl snapshot prune"' -l keep-monthly -x -d 'Keep the newest snapshot of each of the last N monthly buckets.'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl snapshot prune"' -s h -l help -d 'Show the help and exit.'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl snapshot prune"' -F
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl snapshot unlock"' -s h -l help -d 'Show the help and exit.'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl snapshot unlock"' -F
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl sshpiper"' -a auth -d 'The decision for USER (what `serve` would answer), without the private key.'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl sshpiper"' -a authorized-keys -d 'For OpenSSH `AuthorizedKeysCommand … %u`: the allowed key lines (none = deny, exit 0). Nor'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl sshpiper"' -a config -d 'The sshpiperd command line and a complete sshd_config for the move receiver.'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl sshpiper"' -a keys-refresh -d 'Rewrite <project>/.ssh/.cocalc/authorized_keys from host sqlite (an empty key set empties '
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl sshpiper"' -a receiver-users -d 'passwd lines for the receiver\'s login users (btrfs-<uuid>, project-host-<uuid>) of trusted'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl sshpiper"' -a serve -d 'HTTP endpoint for sshpiperd\'s REST plugin: GET /<token>/<user> -> 200 JSON (empty fields ='
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl sshpiper"' -s h -l help -d 'Show the help and exit.'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl sshpiper auth"' -s h -l help -d 'Show the help and exit.'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl sshpiper auth"' -F
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl sshpiper authorized-keys"' -s h -l help -d 'Show the help and exit.'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl sshpiper authorized-keys"' -F
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl sshpiper config"' -l sshd -d 'Print only the receiver\'s sshd_config.'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl sshpiper config"' -l sshpiperd -d 'Print only the sshpiperd command line.'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl sshpiper config"' -s h -l help -d 'Show the help and exit.'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl sshpiper keys-refresh"' -s h -l help -d 'Show the help and exit.'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl sshpiper keys-refresh"' -F
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl sshpiper receiver-users"' -l out -r -F -d 'Rewrite this passwd-format file\'s cocalc-ctl lines (e.g. /etc/passwd or /var/lib/extrauser'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl sshpiper receiver-users"' -s h -l help -d 'Show the help and exit.'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl sshpiper serve"' -l listen -x -d 'Address (default: config sshpiper.rest_listen, 127.0.0.1:8089).'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl sshpiper serve"' -l allow-remote -d 'Allow a non-loopback listen address.'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl sshpiper serve"' -l seconds -x -d 'Stop after this long (default: until SIGTERM).'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl sshpiper serve"' -s h -l help -d 'Show the help and exit.'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl timers"' -a cron -d 'Print the same schedule as /etc/cron.d lines, for hosts without systemd.'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl timers"' -a install -d 'Write service + timer units (hardened, lock-guarded) and enable them.'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl timers"' -a list -d 'Every job: kind, schedule, role, whether its units are installed (and enabled/active).'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl timers"' -a remove -d 'Stop, disable and delete the units `timers install` wrote (others are never touched).'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl timers"' -s h -l help -d 'Show the help and exit.'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl timers cron"' -l role -x -d 'Which jobs: host (project hosts), hub (move worker) or all.'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl timers cron"' -l only -x -d 'Just this job (repeatable); see `timers list`.'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl timers cron"' -l bin -r -F -d 'cocalc-ctl executable the units run (default ops.bin or PATH).'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl timers cron"' -l user -x -d 'User field of the cron.d lines.'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl timers cron"' -s h -l help -d 'Show the help and exit.'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl timers install"' -l user-unit-dir -l unit-dir -r -F -a '(__fish_complete_directories)' -d 'Write units here instead of ops.unit_dir (/etc/systemd/system); systemctl is then left alo'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl timers install"' -l role -x -d 'Which jobs: host (project hosts), hub (move worker) or all.'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl timers install"' -l only -x -d 'Just this job (repeatable); see `timers list`.'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl timers install"' -l bin -r -F -d 'cocalc-ctl executable the units run (default ops.bin or PATH).'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl timers install"' -l no-enable -d 'Write and reload, but do not enable/start.'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl timers install"' -s h -l help -d 'Show the help and exit.'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl timers list"' -l user-unit-dir -l unit-dir -r -F -a '(__fish_complete_directories)' -d 'Write units here instead of ops.unit_dir (/etc/systemd/system); systemctl is then left alo'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl timers list"' -l bin -r -F -d 'cocalc-ctl executable the units run (default ops.bin or PATH).'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl timers list"' -s h -l help -d 'Show the help and exit.'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl timers remove"' -l user-unit-dir -l unit-dir -r -F -a '(__fish_complete_directories)' -d 'Write units here instead of ops.unit_dir (/etc/systemd/system); systemctl is then left alo'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl timers remove"' -l only -x -d 'Just this job (repeatable); see `timers list`.'
complete -c cocalc-ctl -n 'test (__cocalc_ctl_path) = "cocalc-ctl timers remove"' -s h -l help -d 'Show the help and exit.'
