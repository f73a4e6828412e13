//! Membership: list the members, add a learner, promote, remove, change addresses, hand
//! leadership over.
//!
//! Each is one request to the leader (`/admin/members...`, `/admin/leader/transfer`), routed and
//! retried like a read: any node would forward it, and the server makes every change safe to
//! send twice (adding the same learner again, promoting a voter, or updating to the addresses
//! it already has changes nothing). The one exception is a removal whose first answer was
//! lost: the retry then finds no such member, and says so.

use std::time::Instant;

use kvapi::{
    AddMemberBody, MembersResponse, NodeId, TransferLeaderBody, TransferLeaderResponse, UpdateMemberBody,
};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{attempts, Call, Client};
use crate::error::ClientError;
use crate::transport::Request;

impl Client {
    async fn admin<T: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: String,
        body: Option<&impl Serialize>,
    ) -> Result<T, ClientError> {
        let body = match body {
            Some(b) => Some(
                serde_json::to_vec(b)
                    .map_err(|e| ClientError::Other(format!("cannot encode the request: {e}")))?,
            ),
            None => None,
        };
        let call = Call {
            request: Request {
                method,
                path,
                body,
                idempotency_key: None,
                precondition: None,
            },
            stale: false,
        };
        let deadline = Instant::now() + self.config.timeout;
        attempts::decode(&self.execute(&call, "", deadline).await?.body)
    }

    /// The members as the leader sees them, with their progress.
    pub async fn members(&self) -> Result<MembersResponse, ClientError> {
        self.admin(reqwest::Method::GET, "/admin/members".into(), None::<&()>)
            .await
    }

    /// Add node `id` as a learner.
    pub async fn add_member(
        &self,
        id: NodeId,
        http: &str,
        raft: &str,
    ) -> Result<MembersResponse, ClientError> {
        let body = AddMemberBody {
            id,
            http: http.to_string(),
            raft: raft.to_string(),
        };
        self.admin(reqwest::Method::POST, "/admin/members".into(), Some(&body))
            .await
    }

    /// Make learner `id` a voter.
    pub async fn promote_member(&self, id: NodeId) -> Result<MembersResponse, ClientError> {
        self.admin(
            reqwest::Method::POST,
            format!("/admin/members/{id}/promote"),
            None::<&()>,
        )
        .await
    }

    /// Remove member `id`.
    pub async fn remove_member(&self, id: NodeId) -> Result<MembersResponse, ClientError> {
        self.admin(
            reqwest::Method::DELETE,
            format!("/admin/members/{id}"),
            None::<&()>,
        )
        .await
    }

    /// Change the addresses of member `id`.
    pub async fn update_member(
        &self,
        id: NodeId,
        http: &str,
        raft: &str,
    ) -> Result<MembersResponse, ClientError> {
        let body = UpdateMemberBody {
            http: http.to_string(),
            raft: raft.to_string(),
        };
        self.admin(reqwest::Method::PUT, format!("/admin/members/{id}"), Some(&body))
            .await
    }

    /// Hand leadership to voter `to`, or to the most up-to-date other voter.
    pub async fn transfer_leader(&self, to: Option<NodeId>) -> Result<TransferLeaderResponse, ClientError> {
        let answer: TransferLeaderResponse = self
            .admin(
                reqwest::Method::POST,
                "/admin/leader/transfer".into(),
                Some(&TransferLeaderBody { to }),
            )
            .await?;
        // The cached leader is the old one now.
        self.forget_leader();
        Ok(answer)
    }
}
