# bash completion for cocalc-ctl (generated from the CLI by scripts/regenerate; do not edit)

_cocalc_ctl() {
    local cur="${COMP_WORDS[COMP_CWORD]}" prev="${COMP_WORDS[COMP_CWORD-1]}"
    local -A subs=(
        ['cocalc-ctl']='backup config doctor host hub keys metrics move project proxy restore rootfs snapshot sshpiper timers'
        ['cocalc-ctl backup']='cleanup create due init list prune status'
        ['cocalc-ctl config']='show'
        ['cocalc-ctl host']='init status teardown'
        ['cocalc-ctl hub']='account host-role keys migrate project token'
        ['cocalc-ctl hub account']='add disable enable list'
        ['cocalc-ctl hub keys']='ensure rotate show'
        ['cocalc-ctl hub project']='add grant list revoke rm set show users'
        ['cocalc-ctl hub token']='create list prune revoke'
        ['cocalc-ctl keys']='broadcast ensure known-hosts peers proxy-secret register rotate show sync trust untrust watch'
        ['cocalc-ctl metrics']='show write'
        ['cocalc-ctl move']='abort cancel cleanup finalize host-step recv release send start status worker'
        ['cocalc-ctl project']='create delete list show ssh start status stop'
        ['cocalc-ctl proxy']='serve'
        ['cocalc-ctl rootfs']='gc list mount pull resolve rm umount'
        ['cocalc-ctl snapshot']='auto create delete list lock prune unlock'
        ['cocalc-ctl sshpiper']='auth authorized-keys config keys-refresh receiver-keys receiver-users serve'
        ['cocalc-ctl timers']='cron install list remove'
    )
    local -A opts=(
        ['cocalc-ctl backup']='-h --help'
        ['cocalc-ctl backup cleanup']='-h --help'
        ['cocalc-ctl backup create']='--no-wait -h --help'
        ['cocalc-ctl backup due']='-h --help'
        ['cocalc-ctl backup init']='-h --help'
        ['cocalc-ctl backup list']='-h --help'
        ['cocalc-ctl backup prune']='--keep-last --keep-hourly --keep-daily --keep-weekly --keep-monthly --keep-yearly -h --help'
        ['cocalc-ctl backup status']='--limit --after -h --help'
        ['cocalc-ctl config']='-h --help'
        ['cocalc-ctl config show']='-h --help'
        ['cocalc-ctl doctor']='-h --help'
        ['cocalc-ctl host']='-h --help'
        ['cocalc-ctl host init']='--loopback --image -h --help'
        ['cocalc-ctl host status']='-h --help'
        ['cocalc-ctl host teardown']='--delete-image -h --help'
        ['cocalc-ctl hub']='-h --help'
        ['cocalc-ctl hub account']='-h --help'
        ['cocalc-ctl hub account add']='--id -h --help'
        ['cocalc-ctl hub account disable']='-h --help'
        ['cocalc-ctl hub account enable']='-h --help'
        ['cocalc-ctl hub account list']='--limit --after -h --help'
        ['cocalc-ctl hub host-role']='--password-file --no-password --drop -h --help'
        ['cocalc-ctl hub keys']='-h --help'
        ['cocalc-ctl hub keys ensure']='-h --help'
        ['cocalc-ctl hub keys rotate']='--finish -h --help'
        ['cocalc-ctl hub keys show']='-h --help'
        ['cocalc-ctl hub migrate']='-h --help'
        ['cocalc-ctl hub project']='-h --help'
        ['cocalc-ctl hub project add']='--host --image --memory --swap --pids --cpu-shares --tmp --disk -h --help'
        ['cocalc-ctl hub project grant']='--role -h --help'
        ['cocalc-ctl hub project list']='--host --limit --after -h --help'
        ['cocalc-ctl hub project revoke']='-h --help'
        ['cocalc-ctl hub project rm']='--force -h --help'
        ['cocalc-ctl hub project set']='--host --image --force --memory --swap --pids --cpu-shares --tmp --disk -h --help'
        ['cocalc-ctl hub project show']='-h --help'
        ['cocalc-ctl hub project users']='--limit --after -h --help'
        ['cocalc-ctl hub token']='-h --help'
        ['cocalc-ctl hub token create']='--account --project --expires --name -h --help'
        ['cocalc-ctl hub token list']='--account --project --limit --after -h --help'
        ['cocalc-ctl hub token prune']='--older-than -h --help'
        ['cocalc-ctl hub token revoke']='-h --help'
        ['cocalc-ctl keys']='-h --help'
        ['cocalc-ctl keys broadcast']='-h --help'
        ['cocalc-ctl keys ensure']='-h --help'
        ['cocalc-ctl keys known-hosts']='--out -h --help'
        ['cocalc-ctl keys peers']='-h --help'
        ['cocalc-ctl keys proxy-secret']='--rotate --finish -h --help'
        ['cocalc-ctl keys register']='--internal-url --clear-internal-url -h --help'
        ['cocalc-ctl keys rotate']='--which --finish -h --help'
        ['cocalc-ctl keys show']='-h --help'
        ['cocalc-ctl keys sync']='-h --help'
        ['cocalc-ctl keys trust']='-h --help'
        ['cocalc-ctl keys untrust']='-h --help'
        ['cocalc-ctl keys watch']='--seconds -h --help'
        ['cocalc-ctl metrics']='-h --help'
        ['cocalc-ctl metrics show']='-h --help'
        ['cocalc-ctl metrics write']='--textfile-dir -h --help'
        ['cocalc-ctl move']='-h --help'
        ['cocalc-ctl move abort']='--ticket -h --help'
        ['cocalc-ctl move cancel']='-h --help'
        ['cocalc-ctl move cleanup']='--force --ticket -h --help'
        ['cocalc-ctl move finalize']='--from-backup --quota --ticket -h --help'
        ['cocalc-ctl move host-step']='-h --help'
        ['cocalc-ctl move recv']='--from -h --help'
        ['cocalc-ctl move release']='--snapshot --ticket -h --help'
        ['cocalc-ctl move send']='--to --mode --compress --bwlimit --snapshot --ticket -h --help'
        ['cocalc-ctl move start']='--to --mode --compress -h --help'
        ['cocalc-ctl move status']='--watch --limit --after -h --help'
        ['cocalc-ctl move worker']='--once --concurrency --poll -h --help'
        ['cocalc-ctl project']='-h --help'
        ['cocalc-ctl project create']='--quota -h --help'
        ['cocalc-ctl project delete']='--force -h --help'
        ['cocalc-ctl project list']='-h --help'
        ['cocalc-ctl project show']='-h --help'
        ['cocalc-ctl project ssh']='-h --help'
        ['cocalc-ctl project start']='--image -h --help'
        ['cocalc-ctl project status']='-h --help'
        ['cocalc-ctl project stop']='-h --help'
        ['cocalc-ctl proxy']='-h --help'
        ['cocalc-ctl proxy serve']='--mode --listen --access-log --no-access-log --workers -h --help'
        ['cocalc-ctl restore']='--path --to-project --force -h --help'
        ['cocalc-ctl rootfs']='-h --help'
        ['cocalc-ctl rootfs gc']='--max-size -h --help'
        ['cocalc-ctl rootfs list']='-h --help'
        ['cocalc-ctl rootfs mount']='--image --remount -h --help'
        ['cocalc-ctl rootfs pull']='--force --keep -h --help'
        ['cocalc-ctl rootfs resolve']='--image -h --help'
        ['cocalc-ctl rootfs rm']='-h --help'
        ['cocalc-ctl rootfs umount']='-h --help'
        ['cocalc-ctl snapshot']='-h --help'
        ['cocalc-ctl snapshot auto']='-h --help'
        ['cocalc-ctl snapshot create']='-h --help'
        ['cocalc-ctl snapshot delete']='-h --help'
        ['cocalc-ctl snapshot list']='-h --help'
        ['cocalc-ctl snapshot lock']='--reason -h --help'
        ['cocalc-ctl snapshot prune']='--keep-frequent --keep-hourly --keep-daily --keep-weekly --keep-monthly -h --help'
        ['cocalc-ctl snapshot unlock']='-h --help'
        ['cocalc-ctl sshpiper']='-h --help'
        ['cocalc-ctl sshpiper auth']='-h --help'
        ['cocalc-ctl sshpiper authorized-keys']='-h --help'
        ['cocalc-ctl sshpiper config']='--sshd --sshpiperd --write-env -h --help'
        ['cocalc-ctl sshpiper keys-refresh']='-h --help'
        ['cocalc-ctl sshpiper receiver-keys']='-h --help'
        ['cocalc-ctl sshpiper receiver-users']='--out -h --help'
        ['cocalc-ctl sshpiper serve']='--listen --allow-remote --seconds -h --help'
        ['cocalc-ctl timers']='-h --help'
        ['cocalc-ctl timers cron']='--role --only --bin --user -h --help'
        ['cocalc-ctl timers install']='--user-unit-dir --unit-dir --role --only --bin --no-enable -h --help'
        ['cocalc-ctl timers list']='--user-unit-dir --unit-dir --bin -h --help'
        ['cocalc-ctl timers remove']='--user-unit-dir --unit-dir --only -h --help'
    )
    local globals='--config --json --dry-run -v --verbose -q --quiet --wide --version -h --help'
    local valopts=' --account --after --bin --bwlimit --compress --concurrency --config --cpu-shares --disk --expires --from --from-backup --host --id --image --internal-url --keep-daily --keep-frequent --keep-hourly --keep-last --keep-monthly --keep-weekly --keep-yearly --limit --listen --loopback --max-size --memory --mode --name --older-than --only --out --password-file --path --pids --poll --project --quota --reason --role --seconds --snapshot --swap --textfile-dir --ticket --tmp --to --to-project --unit-dir --user --user-unit-dir --which --workers '
    local projcmds='|cocalc-ctl backup cleanup|cocalc-ctl backup create|cocalc-ctl backup list|cocalc-ctl backup prune|cocalc-ctl hub project add|cocalc-ctl hub project grant|cocalc-ctl hub project revoke|cocalc-ctl hub project rm|cocalc-ctl hub project set|cocalc-ctl hub project show|cocalc-ctl hub project users|cocalc-ctl move abort|cocalc-ctl move cancel|cocalc-ctl move cleanup|cocalc-ctl move finalize|cocalc-ctl move release|cocalc-ctl move send|cocalc-ctl move start|cocalc-ctl move status|cocalc-ctl project create|cocalc-ctl project delete|cocalc-ctl project show|cocalc-ctl project ssh|cocalc-ctl project start|cocalc-ctl project status|cocalc-ctl project stop|cocalc-ctl restore|cocalc-ctl rootfs mount|cocalc-ctl rootfs resolve|cocalc-ctl rootfs umount|cocalc-ctl snapshot auto|cocalc-ctl snapshot create|cocalc-ctl snapshot delete|cocalc-ctl snapshot list|cocalc-ctl snapshot lock|cocalc-ctl snapshot prune|cocalc-ctl snapshot unlock|cocalc-ctl sshpiper keys-refresh|'
    local cmdpath=cocalc-ctl i w cfg=
    for ((i = 1; i < COMP_CWORD; i++)); do
        w="${COMP_WORDS[i]}"
        if [[ $w == --config ]]; then cfg="${COMP_WORDS[i+1]}"; fi
        if [[ $valopts == *" $w "* ]]; then ((i++)); continue; fi
        [[ $w == -* ]] && continue
        if [[ -n ${subs[$cmdpath]+x} && " ${subs[$cmdpath]} " == *" $w "* ]]; then
            cmdpath="$cmdpath $w"
        fi
    done
    case "$cmdpath $prev" in
        'cocalc-ctl hub project add --image') _cocalc_ctl_dyn images; return ;;
        'cocalc-ctl hub project set --image') _cocalc_ctl_dyn images; return ;;
        'cocalc-ctl hub token create --project') _cocalc_ctl_dyn projects; return ;;
        'cocalc-ctl hub token list --project') _cocalc_ctl_dyn projects; return ;;
        'cocalc-ctl keys rotate --which') COMPREPLY=($(compgen -W 'host sshpiperd upstream relay' -- "$cur")); return ;;
        'cocalc-ctl move send --mode') COMPREPLY=($(compgen -W 'pipe staged backup' -- "$cur")); return ;;
        'cocalc-ctl move send --compress') COMPREPLY=($(compgen -W 'none lz4 zstd' -- "$cur")); return ;;
        'cocalc-ctl move start --mode') COMPREPLY=($(compgen -W 'pipe staged backup' -- "$cur")); return ;;
        'cocalc-ctl move start --compress') COMPREPLY=($(compgen -W 'none lz4 zstd' -- "$cur")); return ;;
        'cocalc-ctl project start --image') _cocalc_ctl_dyn images; return ;;
        'cocalc-ctl proxy serve --mode') COMPREPLY=($(compgen -W 'host hub' -- "$cur")); return ;;
        'cocalc-ctl restore --to-project') _cocalc_ctl_dyn projects; return ;;
        'cocalc-ctl rootfs mount --image') _cocalc_ctl_dyn images; return ;;
        'cocalc-ctl rootfs resolve --image') _cocalc_ctl_dyn images; return ;;
        'cocalc-ctl timers cron --role') COMPREPLY=($(compgen -W 'host hub all' -- "$cur")); return ;;
        'cocalc-ctl timers cron --only') COMPREPLY=($(compgen -W 'snapshot-auto backup-due keys-sync keys-watch rootfs-gc move-worker sshpiper-serve receiver-sshd' -- "$cur")); return ;;
        'cocalc-ctl timers install --role') COMPREPLY=($(compgen -W 'host hub all' -- "$cur")); return ;;
        'cocalc-ctl timers install --only') COMPREPLY=($(compgen -W 'snapshot-auto backup-due keys-sync keys-watch rootfs-gc move-worker sshpiper-serve receiver-sshd' -- "$cur")); return ;;
        'cocalc-ctl timers remove --only') COMPREPLY=($(compgen -W 'snapshot-auto backup-due keys-sync keys-watch rootfs-gc move-worker sshpiper-serve receiver-sshd' -- "$cur")); return ;;
    esac
    case "$prev" in
        --bin) COMPREPLY=($(compgen -f -- "$cur")); return ;;
        --config) COMPREPLY=($(compgen -f -- "$cur")); return ;;
        --image) COMPREPLY=($(compgen -f -- "$cur")); return ;;
        --out) COMPREPLY=($(compgen -f -- "$cur")); return ;;
        --password-file) COMPREPLY=($(compgen -f -- "$cur")); return ;;
        --textfile-dir) COMPREPLY=($(compgen -d -- "$cur")); return ;;
        --unit-dir) COMPREPLY=($(compgen -d -- "$cur")); return ;;
        --user-unit-dir) COMPREPLY=($(compgen -d -- "$cur")); return ;;
        --account) COMPREPLY=(); return ;;
        --after) COMPREPLY=(); return ;;
        --bwlimit) COMPREPLY=(); return ;;
        --concurrency) COMPREPLY=(); return ;;
        --cpu-shares) COMPREPLY=(); return ;;
        --disk) COMPREPLY=(); return ;;
        --expires) COMPREPLY=(); return ;;
        --from) COMPREPLY=(); return ;;
        --from-backup) COMPREPLY=(); return ;;
        --host) COMPREPLY=(); return ;;
        --id) COMPREPLY=(); return ;;
        --internal-url) COMPREPLY=(); return ;;
        --keep-daily) COMPREPLY=(); return ;;
        --keep-frequent) COMPREPLY=(); return ;;
        --keep-hourly) COMPREPLY=(); return ;;
        --keep-last) COMPREPLY=(); return ;;
        --keep-monthly) COMPREPLY=(); return ;;
        --keep-weekly) COMPREPLY=(); return ;;
        --keep-yearly) COMPREPLY=(); return ;;
        --limit) COMPREPLY=(); return ;;
        --listen) COMPREPLY=(); return ;;
        --loopback) COMPREPLY=(); return ;;
        --max-size) COMPREPLY=(); return ;;
        --memory) COMPREPLY=(); return ;;
        --name) COMPREPLY=(); return ;;
        --older-than) COMPREPLY=(); return ;;
        --path) COMPREPLY=(); return ;;
        --pids) COMPREPLY=(); return ;;
        --poll) COMPREPLY=(); return ;;
        --quota) COMPREPLY=(); return ;;
        --reason) COMPREPLY=(); return ;;
        --role) COMPREPLY=(); return ;;
        --seconds) COMPREPLY=(); return ;;
        --snapshot) COMPREPLY=(); return ;;
        --swap) COMPREPLY=(); return ;;
        --ticket) COMPREPLY=(); return ;;
        --tmp) COMPREPLY=(); return ;;
        --to) COMPREPLY=(); return ;;
        --user) COMPREPLY=(); return ;;
        --workers) COMPREPLY=(); return ;;
    esac
    if [[ $cur == -* ]]; then
        COMPREPLY=($(compgen -W "${opts[$cmdpath]-} $globals" -- "$cur"))
    elif [[ -n ${subs[$cmdpath]+x} ]]; then
        COMPREPLY=($(compgen -W "${subs[$cmdpath]}" -- "$cur"))
    elif [[ $projcmds == *"|$cmdpath|"* ]]; then
        _cocalc_ctl_dyn projects
    else
        COMPREPLY=($(compgen -f -- "$cur"))
    fi
}

# project ids (host sqlite) and cached images, from the same program the user typed
_cocalc_ctl_dyn() {
    local cur="${COMP_WORDS[COMP_CWORD]}" cfg=
    local i
    for ((i = 1; i < COMP_CWORD; i++)); do
        [[ ${COMP_WORDS[i]} == --config ]] && cfg="${COMP_WORDS[i+1]}"
    done
    COMPREPLY=($(compgen -W "$("${COMP_WORDS[0]}" ${cfg:+--config "$cfg"} __complete "$1" "$cur" 2>/dev/null)" -- "$cur"))
}
complete -F _cocalc_ctl cocalc-ctl
