# Client of the opt-in request forwarder (saia_ctl/request_path/forwarder.py), run by
# cloud_interface.sh as: perl client.pl PYTHON ENTRY. If the forwarder does not
# answer, it execs the one-process path (PYTHON -I -S ENTRY), untouched.
# Builtins only, no modules (loading Socket alone costs ~10 ms); the numbers
# below are Linux's (AF_UNIX = SOCK_STREAM = 1, MSG_DONTWAIT 64, MSG_NOSIGNAL
# 16384, EINTR 4, EAGAIN 11).
use strict;

my ($py, $entry) = @ARGV;

sub fallback {
    alarm 0;
    exec {$py} $py, '-I', '-S', $entry;
    print STDERR "cloud_interface.sh: cannot run $py: $!\n";
    exit 127;
}

# The socket: ${TMPDIR:-/tmp}/saia-UID/FNV1A32(SAIA_HOME, normalised).sock in a
# directory that must be ours and closed to everyone else.
my $home = $ENV{SAIA_HOME};
fallback() unless defined $home && substr($home, 0, 1) eq '/';
my @parts;
for (split m{/+}, $home) {
    next if $_ eq '' || $_ eq '.';
    if ($_ eq '..') { pop @parts } else { push @parts, $_ }
}
my $h = 2166136261;
$h = (($h ^ $_) * 16777619) & 0xffffffff for unpack 'C*', '/' . join('/', @parts);
my $tmp = $ENV{TMPDIR};
$tmp = '/tmp' unless defined $tmp && length $tmp;
my $dir = "$tmp/saia-$<";
my @st = lstat $dir;
fallback() unless @st && -d _ && $st[4] == $< && !($st[2] & 077);
my $path = sprintf '%s/%08x.sock', $dir, $h;

socket(my $s, 1, 1, 0) or fallback();
connect($s, pack('S', 1) . $path) or fallback();

# Header, then the child's pid: until it arrives nothing is consumed, so a
# forwarder that does not take the request leaves it to the one-process path.
my $pid;
eval {
    local $SIG{ALRM} = sub { die "timeout\n" };
    alarm 5;
    my $env = join "\0", map { "$_=$ENV{$_}" } keys %ENV;
    my $msg = 'SAIAFWD1' . pack('N', length $env) . $env;
    while (length $msg) {
        my $n = send($s, $msg, 16384);
        if (!defined $n) { next if $! == 4; die "send\n" }
        substr($msg, 0, $n, '');
    }
    my $ack = '';
    while (length $ack < 4) {
        my $n = sysread($s, $ack, 4 - length $ack, length $ack);
        if (!defined $n) { next if $! == 4; die "read\n" }
        die "eof\n" unless $n;
    }
    alarm 0;
    $pid = unpack 'N', $ack;
};
fallback() unless $pid;

# From here on the request is the child's: signals go to it, stdin to the
# socket (shutdown at end of file), the socket to stdout, until the child closes.
$SIG{PIPE} = 'IGNORE';
for my $sig (qw(HUP INT TERM)) { $SIG{$sig} = sub { kill $sig, $pid } }
my $sfd = fileno $s;
# A pipe or socket as stdout: select() reports it readable only once broken
# (the SSH channel closed): then the client is gone.
my $watch_out = (-p STDOUT || -S STDOUT);
my ($in_open, $pending, $status) = (1, '', '');

sub write_out {
    my ($buf) = @_;
    while (length $buf) {
        my $n = syswrite STDOUT, $buf;
        if (!defined $n) { next if $! == 4 || $! == 11; return 0 }
        substr($buf, 0, $n, '');
    }
    return 1;
}

while (1) {
    my ($r, $w) = ('', '');
    vec($r, $sfd, 1) = 1;
    vec($r, 0, 1) = 1 if $in_open && $pending eq '';
    vec($r, 1, 1) = 1 if $watch_out;
    vec($w, $sfd, 1) = 1 if $pending ne '';
    my $n = select(my $ro = $r, my $wo = $w, undef, undef);
    if ($n < 0) { next if $! == 4; last }
    if (vec($ro, $sfd, 1)) {
        my $got = sysread $s, my $buf, 65536;
        if (!defined $got) { next if $! == 4 || $! == 11; last }
        last unless $got;    # the child closed: the answer is complete
        $status .= substr($buf, 0, 16 - length $status) if length $status < 16;
        write_out($buf) or last;
    }
    last if $watch_out && vec($ro, 1, 1);
    if ($in_open && $pending eq '' && vec($ro, 0, 1)) {
        my $got = sysread STDIN, $pending, 65536;
        if (!defined $got && $! == 4) { $pending = ''; next }
        if (!$got) { $pending = ''; $in_open = 0; shutdown $s, 1 }
    }
    if ($pending ne '' && vec($wo, $sfd, 1)) {
        my $sent = send($s, $pending, 64 | 16384);
        if (defined $sent) { substr($pending, 0, $sent, '') }
        elsif ($! != 4 && $! != 11) { ($pending, $in_open) = ('', 0) }    # the child stopped reading
    }
}
close $s;
# The answer is complete: EOF to the cloud side at once (the one-process path
# closes its stdout here too), but the session ends only once the child has
# closed the request's row, as the one-process path's does: whoever reads the
# row after the SSH session ended finds it complete. Bounded by the busy timeout.
close STDOUT;
my $until = time + 35;
select(undef, undef, undef, 0.002) while kill(0, $pid) && time < $until;
# Not part of the protocol; like the one-process path for complete answers.
exit(($status =~ m{^HTTP/\S+ [45]\d\d} || $status eq '') ? 1 : 0);
