//! Tasks and events, and how a command that started a task waits for it.

use std::time::Duration;

use clap::{Args, Subcommand};

use super::clusters::print_cluster;
use super::{ApiArgs, ApiClient, print, when};
use crate::model::{Accepted, Event, Task};

#[derive(Debug, Args)]
pub struct TaskCmd {
    #[command(flatten)]
    pub api: ApiArgs,
    #[command(subcommand)]
    pub cmd: TaskSub,
}

#[derive(Debug, Subcommand)]
pub enum TaskSub {
    /// Recent tasks, newest first.
    List {
        #[arg(long)]
        cluster: Option<String>,
    },
    /// One task.
    Show { id: i64 },
    /// Wait until the task ends; exits non-zero if it failed.
    Wait {
        id: i64,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 600)]
        timeout: u64,
    },
    /// The event log.
    Events {
        #[arg(long)]
        cluster: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: i64,
    },
}

fn print_task(t: &Task) {
    println!(
        "task {} {} {:?}{}{}",
        t.id,
        t.kind,
        t.state,
        t.cluster
            .as_ref()
            .map(|c| format!(" cluster {c}"))
            .unwrap_or_default(),
        if t.message.is_empty() {
            String::new()
        } else {
            format!(": {}", t.message)
        }
    );
}

pub(super) async fn accepted(
    client: &ApiClient,
    json: bool,
    a: Accepted,
    wait: bool,
) -> anyhow::Result<()> {
    if !wait {
        print(json, &a, |a| {
            print_task(&a.task);
            if let Some(c) = &a.cluster {
                print_cluster(c);
            }
        });
        return Ok(());
    }
    if !json {
        println!("task {} {} started; waiting", a.task.id, a.task.kind);
    }
    let task = client
        .wait_task(a.task.id, Duration::from_secs(900))
        .await?;
    print(json, &task, print_task);
    if task.state != crate::model::TaskState::Succeeded {
        anyhow::bail!("task {} failed: {}", task.id, task.message);
    }
    Ok(())
}

pub async fn task(c: TaskCmd) -> anyhow::Result<()> {
    let client = c.api.client()?;
    let json = c.api.json;
    match c.cmd {
        TaskSub::List { cluster } => {
            let q: Vec<(&str, String)> = cluster.into_iter().map(|c| ("cluster", c)).collect();
            let ts: Vec<Task> = client.get_query("/v1/tasks", &q).await?;
            print(json, &ts, |ts| ts.iter().for_each(print_task));
        }
        TaskSub::Show { id } => {
            let t: Task = client.get(&format!("/v1/tasks/{id}")).await?;
            print(json, &t, print_task);
        }
        TaskSub::Wait { id, timeout } => {
            let t = client.wait_task(id, Duration::from_secs(timeout)).await?;
            print(json, &t, print_task);
            if t.state != crate::model::TaskState::Succeeded {
                anyhow::bail!("task {id} failed: {}", t.message);
            }
        }
        TaskSub::Events { cluster, limit } => {
            let mut q = vec![("limit", limit.to_string())];
            if let Some(c) = cluster {
                q.push(("cluster", c));
            }
            let es: Vec<Event> = client.get_query("/v1/events", &q).await?;
            print(json, &es, |es| {
                for e in es.iter().rev() {
                    println!("{} {:<22} {}", when(&e.at), e.kind, e.message);
                }
            });
        }
    }
    Ok(())
}
