//! Users and their tokens (admin), and `whoami`.

use clap::{Args, Subcommand};

use super::{ApiArgs, print};
use crate::model::{CreateUser, IssuedToken, Role, User};

#[derive(Debug, Args)]
pub struct UsersCmd {
    #[command(flatten)]
    pub api: ApiArgs,
    #[command(subcommand)]
    pub cmd: UsersSub,
}

#[derive(Debug, Subcommand)]
pub enum UsersSub {
    /// Who the token belongs to.
    Whoami,
    /// Every user (admin).
    List,
    /// Create a user and print their token (admin).
    Create {
        name: String,
        /// admin, user or agent
        #[arg(long, default_value = "user")]
        role: String,
    },
    /// Issue another token for a user (admin).
    Token { name: String },
}

pub async fn users(c: UsersCmd) -> anyhow::Result<()> {
    let client = c.api.client()?;
    let json = c.api.json;
    match c.cmd {
        UsersSub::Whoami => {
            let u: User = client.get("/v1/whoami").await?;
            print(json, &u, |u| println!("{} ({})", u.name, u.role.as_str()));
        }
        UsersSub::List => {
            let users: Vec<User> = client.get("/v1/users").await?;
            print(json, &users, |users| {
                for u in users {
                    println!("{:<20} {}", u.name, u.role.as_str());
                }
            });
        }
        UsersSub::Create { name, role } => {
            let role: Role = role.parse()?;
            let t: IssuedToken = client.post("/v1/users", &CreateUser { name, role }).await?;
            print(json, &t, |t| {
                println!(
                    "user {} ({}) created; token (shown once):",
                    t.user.name,
                    t.user.role.as_str()
                );
                println!("{}", t.token);
            });
        }
        UsersSub::Token { name } => {
            let t: IssuedToken = client
                .post(&format!("/v1/users/{name}/tokens"), &())
                .await?;
            print(json, &t, |t| println!("{}", t.token));
        }
    }
    Ok(())
}
