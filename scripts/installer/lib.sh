# The vcluster installer's shared steps, sourced by /init (a VM, busybox) and by
# install-dir (a lightweight node, on its host): reports to the install's callback,
# debootstrap with progress, and the configuration every installed system gets
# (docs/provisioning.md, "The installer").
#
# The sourcing script sets:
#   TARGET       the root being installed (/target in a VM)
#   RUN          a scratch directory (/run in a VM)
#   KEYRING      the origin repository's key
#   DEBOOTSTRAP  the command that runs debootstrap
#   CHROOT       the chroot to run (default chroot)
#   REPO PROFILE CALLBACK TOKEN SUITE PROGRESS   from the kernel command line
# and defines fail MESSAGE (reports, cleans up, never returns) and say MESSAGE.

PHASE=start
# Seconds between progress reports within a step (vc.progress=, a whole number 1..3600).
case "${PROGRESS:-}" in
  ''|*[!0-9]*) PROGRESS=3 ;;
esac
[ "$PROGRESS" -ge 1 ] && [ "$PROGRESS" -le 3600 ] || PROGRESS=3
# JSON string: backslash and quote escaped, control characters dropped.
jstr() { printf '"%s"' "$(printf %s "$1" | tr -d '\000-\037' | sed -e 's/\\/\\\\/g' -e 's/"/\\"/g')"; }
# report PHASE JSON-FIELDS...: POST {"phase":..., fields} to the callback, 3 tries.
report() {
  [ -n "$CALLBACK" ] || return 0
  local body="{\"phase\":$(jstr "$1")${2:+,$2}}" i
  for i in 1 2 3; do
    if timeout 20 wget -q -O /dev/null --header "Authorization: Bearer $TOKEN" \
         --header "Content-Type: application/json" --post-data "$body" "$CALLBACK" 2>/dev/null; then
      return 0
    fi
    sleep 1
  done
  say "warning: the callback did not take the report ($1)"
}
step() { PHASE=$1; say "step $1${2:+: $2}"; report installing "\"step\":$(jstr "$1")${2:+,\"message\":$(jstr "$2")}"; }

# Every mount under $TARGET, deepest first, unmounted (lazily when busy).
cleanup_mounts() {
  local m
  for m in "$TARGET/dev/pts" "$TARGET/dev" "$TARGET/proc" "$TARGET/sys"; do
    grep -q " $m " /proc/mounts && umount "$m" 2>/dev/null
  done
  for m in "$TARGET/dev/pts" "$TARGET/dev" "$TARGET/proc" "$TARGET/sys"; do
    grep -q " $m " /proc/mounts && umount -l "$m" 2>/dev/null
  done
  true
}

in_target() { ${CHROOT:-chroot} "$TARGET" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 DEBIAN_FRONTEND=noninteractive "$@"; }

# fetch_profile: the node's profile, turned into $PD (a tree read with cat); sets NODE.
fetch_profile() {
  step profile "fetching the profile"
  timeout 120 wget -q --header "Authorization: Bearer $TOKEN" -O "$RUN/profile.json" "$PROFILE" 2>"$RUN/wget.log" \
    || fail "cannot fetch the profile: $(tail -n1 "$RUN/wget.log")"
  rm -rf "$RUN/profile"
  "$VC_LIB/profile2sh" "$RUN/profile.json" "$RUN/profile" 2>"$RUN/profile.err" \
    || fail "$(cat "$RUN/profile.err")"
  PD=$RUN/profile
  NODE=$(cat "$PD/node")
}
attr() { [ -f "$PD/attr/$1" ] && cat "$PD/attr/$1"; }

# bootstrap INCLUDE [DEBOOTSTRAP-OPTIONS...]: debootstrap $SUITE from $REPO into $TARGET,
# reporting progress; sets PKGS_TOTAL.
#
# debootstrap --debian-installer writes machine-readable progress on fd 3:
#   P: NOW END NAME   (SIZEDEBS: END = the number of packages; DOWNDEBS: bytes)
#   I: NAME / IA: arg / IF: format   (I: RETRIEVING / VALIDATING: one per package)
#   E: NAME / EA: arg / EF: format   (the error that stops it)
progress_reader() {
  local key rest a b c stage="" err="" eargs="" msg x t
  set -f   # the words of a line are split, never globbed
  while read -r key rest; do
    set -- $rest
    a=${1:-} b=${2:-} c=${3:-}
    case "$key" in
      P:)
        [ -n "$c" ] || c=$LASTSTAGE   # the per-file progress lines carry no name
        stage=$c
        case "$c" in
          SIZEDEBS) PKGS_TOTAL=$b ;;
        esac
        t=$(cut -d. -f1 /proc/uptime)
        if [ "$c" != "$LASTSTAGE" ] || [ $((t - LAST)) -ge "$PROGRESS" ] || [ "$a" = "$b" ]; then
          LAST=$t LASTSTAGE=$c
          case "$c" in
            DOWNDEBS) report installing "\"step\":\"download\",\"packages_done\":$PKGS_DONE,\"packages_total\":$PKGS_TOTAL,\"bytes_done\":$a,\"bytes_total\":$b,\"message\":\"packages $PKGS_DONE/$PKGS_TOTAL\"" ;;
            *) report installing "\"step\":$(jstr "$(echo "$c" | tr A-Z a-z)"),\"done\":$a,\"total\":$b,\"packages_total\":$PKGS_TOTAL,\"message\":$(jstr "$c $a/$b")" ;;
          esac
        fi
        ;;
      I:)
        case "$a" in
          VALIDATING) PKGS_DONE=$((PKGS_DONE + 1)) ;;  # once per package, fetched or not
        esac
        ;;
      E:) err=$a eargs="" ;;
      EA:) eargs="$eargs$rest
" ;;
      EF:)
        # the message: the format with its %s filled from the EA: lines, in order
        msg=$rest
        while [ -n "$eargs" ]; do
          x=${eargs%%
*}; eargs=${eargs#*
}
          case "$msg" in *%s*) msg="${msg%%\%s*}$x${msg#*\%s}" ;; *) msg="$msg $x" ;; esac
        done
        echo "debootstrap: $msg ($err)" > "$RUN/debootstrap.err"
        ;;
    esac
  done
  echo "$PKGS_DONE $PKGS_TOTAL" > "$RUN/debootstrap.count"
}
bootstrap() {
  local include=$1 rc t_ds bytes
  shift
  step bootstrap "debootstrap $SUITE from $REPO"
  PKGS_DONE=0 PKGS_TOTAL=0 LAST=0 LASTSTAGE=""
  rm -f "$RUN/debootstrap.err" "$RUN/debootstrap.rc"
  t_ds=$(cut -d' ' -f1 /proc/uptime)
  { $DEBOOTSTRAP --debian-installer --arch=amd64 --variant=minbase --extractor=ar \
      --keyring="$KEYRING" --include="$include" "$@" \
      "$SUITE" "$TARGET" "$REPO" 3>&1 >>"$RUN/debootstrap.log" 2>&1; echo $? > "$RUN/debootstrap.rc"; } | progress_reader
  rc=$(cat "$RUN/debootstrap.rc")
  [ "$rc" = 0 ] || fail "debootstrap exited $rc: $(cat "$RUN/debootstrap.err" 2>/dev/null || tail -n1 "$RUN/debootstrap.log")"
  read -r PKGS_DONE PKGS_TOTAL < "$RUN/debootstrap.count"
  bytes=$(du -sk "$TARGET/var/cache/apt/archives" 2>/dev/null | cut -f1)
  say "debootstrap done: $PKGS_TOTAL packages in $(awk "BEGIN{print $(cut -d' ' -f1 /proc/uptime) - $t_ds}")s"
  report installing "\"step\":\"bootstrap-done\",\"packages_done\":$PKGS_TOTAL,\"packages_total\":$PKGS_TOTAL,\"bytes_done\":$((${bytes:-0} * 1024)),\"message\":\"packages $PKGS_TOTAL/$PKGS_TOTAL\""
}

# mount_target: proc, sys and dev inside $TARGET, for commands run in it.
mount_target() {
  mount -t proc proc "$TARGET/proc" 2>/dev/null
  mount -t sysfs sysfs "$TARGET/sys" 2>/dev/null
  mount --bind /dev "$TARGET/dev"
  mount --bind /dev/pts "$TARGET/dev/pts"
}

# configure_common: what every installed system gets: its name, apt from the same
# repository and key, the operator's SSH keys, and the install's callback and token for
# its first boot (which reports "booted", then forgets the token).
configure_common() {
  echo "$NODE" > "$TARGET/etc/hostname"
  printf '127.0.0.1\tlocalhost\n127.0.1.1\t%s\n::1\tlocalhost ip6-localhost ip6-loopback\n' "$NODE" > "$TARGET/etc/hosts"
  mkdir -p "$TARGET/etc/apt/keyrings"
  cp "$KEYRING" "$TARGET/etc/apt/keyrings/vcluster-origin.gpg"
  echo "deb [signed-by=/etc/apt/keyrings/vcluster-origin.gpg] $REPO $SUITE main" > "$TARGET/etc/apt/sources.list"
  ls "$TARGET"/etc/ssh/ssh_host_*_key >/dev/null 2>&1 || in_target ssh-keygen -A >/dev/null || fail "ssh-keygen -A"
  local keys
  keys=$(attr ssh_authorized_keys)
  if [ -n "$keys" ]; then
    mkdir -p -m 0700 "$TARGET/root/.ssh"
    printf '%s\n' "$keys" > "$TARGET/root/.ssh/authorized_keys"
    chmod 0600 "$TARGET/root/.ssh/authorized_keys"
  else
    say "note: no ssh_authorized_keys attribute: root has no key"
  fi
  mkdir -p -m 0700 "$TARGET/etc/vcluster"
  ( umask 077; { echo "VC_CALLBACK='$CALLBACK'"; echo "VC_TOKEN='$TOKEN'"; echo "VC_NODE='$NODE'"; } > "$TARGET/etc/vcluster/install.env" )
}

# profile_files_and_posts: the profile's files, then its post scripts in the target.
profile_files_and_posts() {
  local d p m n=0
  step files "the profile's files"
  for d in "$PD"/files/*; do
    [ -d "$d" ] || continue
    p=$(cat "$d/path"); m=$(cat "$d/mode")
    mkdir -p "$TARGET${p%/*}"
    cat "$d/content" > "$TARGET$p" || fail "cannot write $p"
    chmod "$m" "$TARGET$p" || fail "cannot chmod $m $p"
  done
  for d in "$PD"/post/*; do
    [ -d "$d" ] || continue
    n=$((n + 1))
    step post "post script $n ($(cat "$d/role"))"
    cp "$d/script" "$TARGET/tmp/vc-post"
    chmod 0700 "$TARGET/tmp/vc-post"
    in_target VC_NODE="$NODE" VC_CLUSTER="$(cat "$PD/cluster")" VC_SITE="$(cat "$PD/site")" VC_ROLE="$(cat "$d/role")" \
      /bin/sh -e /tmp/vc-post >"$RUN/post.log" 2>&1 || fail "post script $n ($(cat "$d/role")) failed: $(tail -n1 "$RUN/post.log")"
    cat "$RUN/post.log"
    rm -f "$TARGET/tmp/vc-post"
  done
}
