//! Reachability helpers: `ping` with its summary parsed, and [`wait_until`] for
//! conditions that become true eventually (a daemon's handshake, a lease).

use std::time::{Duration, Instant};

use crate::NetNs;

/// How to ping. Defaults: 3 echoes 100 ms apart, each answered within 2 s.
#[derive(Clone, Debug)]
pub struct PingOpts {
    pub count: u32,
    pub interval: Duration,
    /// How long to wait for the last reply (`-W`).
    pub timeout: Duration,
    /// ICMP payload bytes (`-s`); `None` for ping's default 56.
    pub size: Option<u32>,
    /// Set the don't-fragment bit (`-M do`).
    pub dont_fragment: bool,
}

impl Default for PingOpts {
    fn default() -> Self {
        PingOpts {
            count: 3,
            interval: Duration::from_millis(100),
            timeout: Duration::from_secs(2),
            size: None,
            dont_fragment: false,
        }
    }
}

impl PingOpts {
    pub fn count(mut self, n: u32) -> Self {
        self.count = n;
        self
    }
    pub fn interval(mut self, d: Duration) -> Self {
        self.interval = d;
        self
    }
    pub fn timeout(mut self, d: Duration) -> Self {
        self.timeout = d;
        self
    }
    pub fn size(mut self, bytes: u32) -> Self {
        self.size = Some(bytes);
        self
    }
    pub fn dont_fragment(mut self) -> Self {
        self.dont_fragment = true;
        self
    }
}

/// ping's summary: counts and round-trip times (`None` when nothing came back).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PingStats {
    pub transmitted: u32,
    pub received: u32,
    pub duplicates: u32,
    pub rtt_min: Option<Duration>,
    pub rtt_avg: Option<Duration>,
    pub rtt_max: Option<Duration>,
    pub rtt_mdev: Option<Duration>,
}

impl PingStats {
    /// Lost fraction in [0, 1].
    pub fn loss(&self) -> f64 {
        if self.transmitted == 0 {
            return 1.0;
        }
        1.0 - self.received as f64 / self.transmitted as f64
    }

    /// Parses the summary of iputils `ping -q`.
    pub fn parse(out: &str) -> Option<PingStats> {
        let mut s = PingStats::default();
        let counts = out.lines().find(|l| l.contains("packets transmitted"))?;
        for part in counts.split(',') {
            let mut words = part.split_whitespace();
            let n = words
                .next()
                .and_then(|w| w.trim_start_matches('+').parse().ok());
            match (n, words.next()) {
                (Some(n), Some("packets")) => s.transmitted = n,
                (Some(n), Some("received")) => s.received = n,
                (Some(n), Some("duplicates")) => s.duplicates = n,
                _ => {}
            }
        }
        if let Some(rtt) = out
            .lines()
            .find(|l| l.starts_with("rtt") || l.starts_with("round-trip"))
        {
            let values = rtt.split('=').nth(1)?.split_whitespace().next()?;
            let v: Vec<Duration> = values
                .split('/')
                .filter_map(|x| x.parse::<f64>().ok())
                .map(|ms| Duration::from_secs_f64(ms / 1000.0))
                .collect();
            if let [min, avg, max, mdev] = v[..] {
                s.rtt_min = Some(min);
                s.rtt_avg = Some(avg);
                s.rtt_max = Some(max);
                s.rtt_mdev = Some(mdev);
            }
        }
        Some(s)
    }
}

/// Pings `addr` from `ns`. No reply is a result (loss 1.0), not a panic; a ping that
/// cannot run at all (bad address, no route) panics with its stderr.
pub fn ping(ns: &NetNs, addr: &str, opts: &PingOpts) -> PingStats {
    ping_in(ns.name(), addr, opts)
}

/// [`ping`] from the namespace called `ns`, which this process need not own (a cluster
/// node a host agent made).
pub fn ping_in(ns: &str, addr: &str, opts: &PingOpts) -> PingStats {
    let mut argv: Vec<String> = vec![
        "ping".into(),
        "-q".into(),
        "-n".into(),
        "-c".into(),
        opts.count.to_string(),
        "-i".into(),
        format!("{:.3}", opts.interval.as_secs_f64()),
        "-W".into(),
        format!("{:.3}", opts.timeout.as_secs_f64()),
    ];
    if let Some(size) = opts.size {
        argv.extend(["-s".into(), size.to_string()]);
    }
    if opts.dont_fragment {
        argv.extend(["-M".into(), "do".into()]);
    }
    argv.push(addr.into());
    let out = crate::netns::run(&mut crate::netns::netns_exec(ns, &argv[0], &argv[1..]));
    match PingStats::parse(&out.stdout) {
        Some(s) if out.code != Some(2) => s,
        _ => panic!(
            "ping {addr} from {ns} did not run: {}{}",
            out.stderr.trim(),
            out.stdout.trim()
        ),
    }
}

/// Polls `cond` every 20 ms until it holds; panics naming `what` after `timeout`.
pub fn wait_until(what: &str, timeout: Duration, cond: impl FnMut() -> bool) {
    if !try_wait_until(timeout, cond) {
        panic!("timed out after {timeout:?} waiting for {what}");
    }
}

/// Polls `cond` every 20 ms until it holds (true) or `timeout` passes (false).
pub fn try_wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        crate::check_interrupted();
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_iputils_summary_with_duplicates_and_loss() {
        let out = "PING 10.0.0.2 (10.0.0.2) 56(84) bytes of data.\n\n--- 10.0.0.2 ping statistics ---\n\
                   10 packets transmitted, 7 received, +2 duplicates, 30% packet loss, time 905ms\n\
                   rtt min/avg/max/mdev = 20.112/20.450/21.001/0.250 ms\n";
        let s = PingStats::parse(out).unwrap();
        assert_eq!((s.transmitted, s.received, s.duplicates), (10, 7, 2));
        assert!((s.loss() - 0.3).abs() < 1e-9);
        assert_eq!(s.rtt_avg, Some(Duration::from_micros(20_450)));
    }

    #[test]
    fn parses_total_loss_without_rtt() {
        let out = "3 packets transmitted, 0 received, 100% packet loss, time 2030ms\n";
        let s = PingStats::parse(out).unwrap();
        assert_eq!(s.loss(), 1.0);
        assert_eq!(s.rtt_avg, None);
    }
}
