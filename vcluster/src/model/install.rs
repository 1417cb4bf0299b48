//! A provisioned node's install as the API shows it and as its frontend reports it
//! (docs/provisioning.md, "States").

use serde::{Deserialize, Serialize};
use std::str::FromStr;
use utoipa::ToSchema;

use super::UnknownValue;

closed_set! {
    /// Where a node's install is: `pending → pxe → installing → rebooting → booted`, or
    /// `failed` (with the reason) from any of the first four.
    pub enum InstallState as "install state" {
        /// Asked for; the node has not fetched its boot script yet.
        Pending = "pending",
        /// The node network-booted and fetched its boot script from the frontend.
        Pxe = "pxe",
        /// The installer runs and reports progress.
        Installing = "installing",
        /// The installer finished and rebooted the node into its disk.
        Rebooting = "rebooting",
        /// The installed system came up from its disk and said so.
        Booted = "booted",
        Failed = "failed",
    }
}

impl InstallState {
    /// `booted` and `failed`: nothing moves the install on from here but a reinstall.
    pub fn is_final(self) -> bool {
        matches!(self, InstallState::Booted | InstallState::Failed)
    }

    /// The node boots from the network (its installer) in these states, from its disk
    /// in the others: a node whose install finished never PXE-installs again by itself.
    pub fn boots_from_network(self) -> bool {
        matches!(
            self,
            InstallState::Pending | InstallState::Pxe | InstallState::Installing
        )
    }

    /// Whether a report of `to` may follow this state.
    pub fn may_become(self, to: InstallState) -> bool {
        use InstallState::*;
        match to {
            Pending => false,
            Pxe => matches!(self, Pending | Pxe),
            Installing => matches!(self, Pending | Pxe | Installing),
            Rebooting => matches!(self, Installing | Rebooting),
            Booted => matches!(self, Installing | Rebooting),
            Failed => !self.is_final(),
        }
    }
}

/// A node's install (`Node::install`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NodeInstall {
    pub state: InstallState,
    /// Packages unpacked so far and in all, while installing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub packages_done: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub packages_total: Option<i64>,
    /// Bytes downloaded so far, while installing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<i64>,
    /// The installer's last step (`download`, `unpackbase`, `bootloader`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    /// Why it failed, naming the phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub started_at: chrono::DateTime<chrono::Utc>,
    /// When the current state began (the per-phase timeout counts from the last report).
    pub phase_started_at: chrono::DateTime<chrono::Utc>,
}

impl NodeInstall {
    /// One short cell for tables: `installing 41/233`, `failed`, `booted`.
    pub fn summary(&self) -> String {
        match (
            self.state,
            &self.step,
            self.packages_done,
            self.packages_total,
        ) {
            (InstallState::Installing, Some(step), Some(d), Some(t)) => {
                format!("installing {step} {d}/{t}")
            }
            (InstallState::Installing, None, Some(d), Some(t)) => format!("installing {d}/{t}"),
            (InstallState::Installing, Some(step), _, _) => format!("installing {step}"),
            (s, _, _, _) => s.to_string(),
        }
    }
}

/// What a frontend's agent relays from a node (`POST /v1/hosts/{host}/install-reports`):
/// the node's installer or installed system, authenticated by the install's token.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InstallReport {
    pub node: String,
    pub token: String,
    pub state: InstallState,
    #[serde(default)]
    pub packages_done: Option<i64>,
    #[serde(default)]
    pub packages_total: Option<i64>,
    #[serde(default)]
    pub bytes: Option<i64>,
    /// The installer's step (`partition`, `download`, `unpackbase`, ...).
    #[serde(default)]
    pub step: Option<String>,
    /// With `failed`: what went wrong, as the installer says it.
    #[serde(default)]
    pub reason: Option<String>,
}

/// What an installer (or the installed system's first boot) posts to its frontend
/// (`POST /install/callback`, the token as `Authorization: Bearer`), as docs/provisioning.md's
/// callback contract says; the frontend adds the node's name from its address.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InstallCallback {
    pub phase: InstallState,
    /// The installer's step: `network`, `profile`, `partition`, ..., `finish`.
    #[serde(default)]
    pub step: Option<String>,
    /// For people (`packages 12/148`).
    #[serde(default)]
    pub message: Option<String>,
    /// While downloading: packages and bytes fetched and in all.
    #[serde(default)]
    pub packages_done: Option<i64>,
    #[serde(default)]
    pub packages_total: Option<i64>,
    #[serde(default)]
    pub bytes_done: Option<i64>,
    #[serde(default)]
    pub bytes_total: Option<i64>,
    /// In later steps: that step's progress, in its own units (packages).
    #[serde(default)]
    pub done: Option<i64>,
    #[serde(default)]
    pub total: Option<i64>,
    #[serde(default)]
    pub reason: Option<String>,
    /// With `booted`: the installed system's host name and first address.
    #[serde(default)]
    pub node: Option<String>,
    #[serde(default)]
    pub address: Option<String>,
}

impl InstallCallback {
    /// The report it makes for `node`: packages from the download's counts, or from the
    /// step's own (unpack, configure) once past the download.
    pub fn into_report(self, node: String, token: String) -> InstallReport {
        // Steps whose own counts are packages (the others count bytes of indexes, ...).
        const PACKAGE_STEPS: [&str; 6] = [
            "extractpkgs",
            "instcore",
            "unpackreq",
            "confreq",
            "unpackbase",
            "confbase",
        ];
        let counts_packages = self
            .step
            .as_deref()
            .is_some_and(|s| PACKAGE_STEPS.contains(&s));
        let (packages_done, packages_total) = match (self.done, self.total) {
            (Some(d), Some(t)) if self.packages_done.is_none() && counts_packages => {
                (Some(d), Some(t))
            }
            _ => (self.packages_done, self.packages_total),
        };
        InstallReport {
            node,
            token,
            state: self.phase,
            packages_done,
            packages_total,
            bytes: self.bytes_done,
            step: self.step,
            reason: self.reason,
        }
    }
}

/// Reports in one batch at most (`POST /v1/hosts/{host}/install-reports/batch`): a site's
/// host agent sends what its nodes reported in the last second, so a batch holds a few
/// reports a node at most even at hundreds of nodes.
pub const MAX_REPORT_BATCH: usize = 256;

/// The port of the site-local address where a node's installer (and its installed
/// system's first boot) posts its reports (`POST /install/callback`): its own host's agent
/// takes them there, at the node's site, and sends them to the controller in batches, so
/// they never cross the WAN one by one inside the overlay.
pub const SITE_REPORTS_PORT: u16 = 8080;

/// What a site's host agent sends the controller for the nodes it runs
/// (`POST /v1/hosts/{host}/install-reports/batch`): their reports, each with its install's
/// token, applied in order for each node.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InstallReportBatch {
    pub reports: Vec<InstallReport>,
}

/// What became of one report of a batch: the status a report on its own would have had
/// (204 taken, 403 a foreign token, 409 a state it cannot take, ...), and why not.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InstallReportOutcome {
    pub status: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The answer to a batch: one outcome per report, in the batch's order.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InstallReportOutcomes {
    pub results: Vec<InstallReportOutcome>,
}

/// `POST /v1/clusters/{cluster}/reinstall`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReinstallRequest {
    /// A node set (`c1-node-[1-4,7]`) of the cluster's nodes.
    pub nodes: String,
}

/// The largest count or byte figure a report may carry.
pub const MAX_INSTALL_FIGURE: i64 = 1 << 50;
/// The longest failure reason kept, in bytes (longer ones are cut).
pub const MAX_INSTALL_REASON: usize = 1024;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_callback_counts_packages_from_the_download_or_from_package_steps_only() {
        let cb = |step: &str, done: Option<i64>, total: Option<i64>, pd: Option<i64>| {
            InstallCallback {
                phase: InstallState::Installing,
                step: Some(step.into()),
                message: None,
                packages_done: pd,
                packages_total: pd.map(|_| 148),
                bytes_done: Some(7),
                bytes_total: None,
                done,
                total,
                reason: None,
                node: None,
                address: None,
            }
            .into_report("n".into(), "t".into())
        };
        let r = cb("download", None, None, Some(12));
        assert_eq!(
            (r.packages_done, r.packages_total, r.bytes),
            (Some(12), Some(148), Some(7))
        );
        let r = cb("unpackbase", Some(41), Some(75), None);
        assert_eq!((r.packages_done, r.packages_total), (Some(41), Some(75)));
        let r = cb("downpkgs", Some(191_328), Some(191_328), None);
        assert_eq!(
            (r.packages_done, r.packages_total),
            (None, None),
            "bytes of an index are not packages"
        );
        assert_eq!(r.step.as_deref(), Some("downpkgs"));
    }

    #[test]
    fn an_install_moves_forward_only_and_ends_at_booted_or_failed() {
        use InstallState::*;
        assert!(Pending.may_become(Pxe));
        assert!(Pxe.may_become(Installing));
        assert!(Installing.may_become(Installing), "progress reports");
        assert!(Installing.may_become(Rebooting));
        assert!(Rebooting.may_become(Booted));
        assert!(
            !Booted.may_become(Installing),
            "no install loop after booted"
        );
        assert!(!Booted.may_become(Failed));
        assert!(!Failed.may_become(Installing));
        assert!(
            !Rebooting.may_become(Pxe),
            "a node that finished does not PXE again"
        );
        assert!(Pending.boots_from_network() && !Rebooting.boots_from_network());
        assert_eq!("installing".parse::<InstallState>(), Ok(Installing));
        assert!("done".parse::<InstallState>().is_err());
    }
}
