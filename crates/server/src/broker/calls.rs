//! The service registry and the calls in flight: which connection provides
//! each service, and each forwarded call until its provider answers, its
//! caller gives up, or either leaves. A call holds its caller's charge, so
//! removing it from this registry is all it takes to give its slot back.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use qm_ipc_proto::interface::ReplyOutcome;
use qm_ipc_proto::raw::RawJson;
use qm_ipc_proto::types::encode_service_request;
use qm_ipc_proto::ErrorReply;
use tokio::sync::oneshot;

use super::account::Charge;
use super::ConnId;
use crate::outbox::Outbox;

pub type CallId = u64;

/// What a caller eventually gets for a call: the result as JSON text.
pub type CallOutcome = Result<RawJson, ErrorReply>;

struct PendingCall {
    provider: ConnId,
    service: String,
    method: String,
    reply: oneshot::Sender<CallOutcome>,
    /// The caller's charge for this call.
    _charge: Charge,
}

/// A limit a call was refused by: its name and its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallLimit(pub &'static str, pub usize);

pub struct Calls {
    services: HashMap<String, ConnId>,
    pending: HashMap<CallId, PendingCall>,
    per_service: HashMap<String, usize>,
    next_id: CallId,
}

impl Default for Calls {
    fn default() -> Self {
        Self {
            services: HashMap::new(),
            pending: HashMap::new(),
            per_service: HashMap::new(),
            next_id: 1,
        }
    }
}

impl Calls {
    /// Maps every one of `services` to `provider`, or none of them.
    pub fn register(&mut self, provider: ConnId, services: &[String]) -> Result<(), ErrorReply> {
        if let Some(taken) = services.iter().find(|s| self.services.contains_key(*s)) {
            return Err(ErrorReply::AlreadyRegistered {
                service: taken.clone(),
            });
        }
        for service in services {
            self.services.insert(service.clone(), provider);
        }
        Ok(())
    }

    pub fn provider_of(&self, service: &str) -> Result<ConnId, ErrorReply> {
        self.services
            .get(service)
            .copied()
            .ok_or_else(|| ErrorReply::ServiceUnavailable {
                service: service.to_owned(),
            })
    }

    /// Queues the request on the provider's outbox and keeps the call until
    /// it is answered.
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        &mut self,
        provider: ConnId,
        outbox: &Arc<Outbox>,
        service: &str,
        method: String,
        parameters: RawJson,
        timeout: Duration,
        charge: Charge,
        max_per_service: usize,
    ) -> Result<(CallId, oneshot::Receiver<CallOutcome>), CallLimit> {
        if self.per_service.get(service).copied().unwrap_or(0) >= max_per_service {
            return Err(CallLimit("max_calls_per_service", max_per_service));
        }
        let id = self.next_id;
        let timeout_ms = timeout.as_millis() as u64;
        outbox
            .try_push_frame(|out| {
                encode_service_request(out, id, service, &method, parameters.get(), timeout_ms)
            })
            .map_err(|_| CallLimit("max_queued_bytes", outbox.max_queued_bytes()))?;
        self.next_id += 1;
        *self.per_service.entry(service.to_owned()).or_default() += 1;
        let (tx, rx) = oneshot::channel();
        self.pending.insert(
            id,
            PendingCall {
                provider,
                service: service.to_owned(),
                method,
                reply: tx,
                _charge: charge,
            },
        );
        Ok((id, rx))
    }

    /// Forgets a call; a later reply to it is refused.
    pub fn abandon(&mut self, id: CallId) {
        self.remove(id);
    }

    /// A provider's reply. Only the provider the call was sent to may
    /// answer it.
    /// The service and method of a call in flight.
    pub fn pending_call(&self, id: CallId) -> Option<(&str, &str)> {
        self.pending
            .get(&id)
            .map(|c| (c.service.as_str(), c.method.as_str()))
    }

    pub fn reply(
        &mut self,
        provider: ConnId,
        id: CallId,
        outcome: ReplyOutcome,
    ) -> Result<(), ErrorReply> {
        if self.pending.get(&id).map(|c| c.provider) != Some(provider) {
            return Err(ErrorReply::NoSuchRequest { id });
        }
        let Some(call) = self.remove(id) else {
            return Err(ErrorReply::NoSuchRequest { id });
        };
        let result = match outcome {
            ReplyOutcome::Result(value) => Ok(value),
            ReplyOutcome::Error { error, parameters } => Err(ErrorReply::ServiceError {
                service: call.service,
                method: call.method,
                error,
                parameters: parameters.to_value(),
            }),
        };
        // The caller may have gone in the meantime; nothing to do then.
        let _ = call.reply.send(result);
        Ok(())
    }

    /// Unmaps a provider's services and fails the calls waiting for it with
    /// `ServiceUnavailable` at once.
    pub fn forget_provider(&mut self, provider: ConnId, services: &[String]) {
        for service in services {
            if self.services.get(service) == Some(&provider) {
                self.services.remove(service);
            }
        }
        let orphaned: Vec<CallId> = self
            .pending
            .iter()
            .filter(|(_, call)| call.provider == provider)
            .map(|(id, _)| *id)
            .collect();
        for id in orphaned {
            if let Some(call) = self.remove(id) {
                let _ = call.reply.send(Err(ErrorReply::ServiceUnavailable {
                    service: call.service,
                }));
            }
        }
    }

    pub fn service_count(&self) -> usize {
        self.services.len()
    }

    pub fn services(&self) -> Vec<String> {
        let mut services: Vec<String> = self.services.keys().cloned().collect();
        services.sort();
        services
    }

    pub fn in_flight(&self) -> usize {
        self.pending.len()
    }

    /// Removes a call and its count against its service.
    fn remove(&mut self, id: CallId) -> Option<PendingCall> {
        let call = self.pending.remove(&id)?;
        if let Some(n) = self.per_service.get_mut(&call.service) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.per_service.remove(&call.service);
            }
        }
        Some(call)
    }
}
