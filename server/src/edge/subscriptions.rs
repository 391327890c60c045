//! Subscriptions: Subscribe, Unsubscribe, ListSubscriptions.

use ordo_proto::v1;
use ordo_scheduler::model::{Op, Outcome, RejectCode, Txn};
use ordo_scheduler::reads;
use ordo_scheduler::subs::{Near, SubKind, SubTag, SubscriptionRecord};
use tonic::{Request, Response, Status};

use super::{internal, is_retry, writes::reused, OrdoService};

/// Subscriptions in one ListSubscriptions answer (a user has at most one per SKU and kind).
const LIST_SUBSCRIPTIONS_MAX: usize = 1000;

pub(super) fn tag(kind: i32, field: &str) -> Result<SubTag, Status> {
    match v1::SubscriptionKind::try_from(kind) {
        Ok(v1::SubscriptionKind::PriceDrop) => Ok(SubTag::PriceDrop),
        Ok(v1::SubscriptionKind::BackInStock) => Ok(SubTag::BackInStock),
        _ => Err(Status::invalid_argument(format!(
            "{field}: kind must be PRICE_DROP or BACK_IN_STOCK"
        ))),
    }
}

pub(super) fn wire_kind(tag: SubTag) -> v1::SubscriptionKind {
    match tag {
        SubTag::PriceDrop => v1::SubscriptionKind::PriceDrop,
        SubTag::BackInStock => v1::SubscriptionKind::BackInStock,
    }
}

/// The wire form of a subscription.
pub(super) fn subscription(r: &SubscriptionRecord) -> v1::Subscription {
    let span = r.spans.last().copied();
    let mut wire = v1::Subscription {
        user: r.user.clone(),
        sku: r.sku,
        kind: wire_kind(r.kind.tag()) as i32,
        active: r.active(),
        since_epoch: span.map(|s| s.since).unwrap_or_default(),
        until_epoch: span.and_then(|s| s.until).unwrap_or_default(),
        request_id: r.request_id.clone(),
        ..Default::default()
    };
    match &r.kind {
        SubKind::PriceDrop { below_cents } => wire.price_below_cents = below_cents.unwrap_or(0),
        SubKind::BackInStock { near, dcs } => {
            wire.dc_ids = dcs.clone();
            if let Some(near) = near {
                wire.near = true;
                wire.lat = f64::from(near.lat_e6) / 1e6;
                wire.lon = f64::from(near.lon_e6) / 1e6;
                wire.radius_m = near.radius_m;
            }
        }
    }
    wire
}

impl OrdoService {
    fn subscriber(&self, user: &str, field: &str) -> Result<(), Status> {
        ordo_scheduler::validate::validate_op(&Op::Unsubscribe {
            user: user.to_string(),
            sku: 1,
            tag: SubTag::PriceDrop,
        })
        .map_err(|e| Status::invalid_argument(format!("{field}: {e}")))
    }

    pub(super) async fn subscribe_unmarked(
        &self,
        request: Request<v1::SubscribeRequest>,
    ) -> Result<Response<v1::SubscribeResponse>, Status> {
        let retry = is_retry(&request);
        let r = request.into_inner();
        let field = "subscribe";
        let request_id = self.request_id(r.request_id, field)?;
        self.subscriber(&r.user, field)?;
        self.known_sku(r.sku, field)?;
        let kind = match tag(r.kind, field)? {
            SubTag::PriceDrop => SubKind::PriceDrop {
                below_cents: (r.price_below_cents != 0).then_some(r.price_below_cents),
            },
            SubTag::BackInStock => {
                let near = match r.near {
                    false => None,
                    true => Some(Near {
                        lat_e6: crate::convert::micro_degrees("subscribe: lat", r.lat, 90.0)?,
                        lon_e6: crate::convert::micro_degrees("subscribe: lon", r.lon, 180.0)?,
                        radius_m: r.radius_m,
                    }),
                };
                SubKind::BackInStock {
                    near,
                    dcs: r.dc_ids,
                }
            }
        };
        let op = Op::Subscribe {
            user: r.user,
            sku: r.sku,
            kind,
        };
        ordo_scheduler::validate::validate_op(&op)
            .map_err(|e| Status::invalid_argument(format!("{field}: {e}")))?;
        let result = self
            .run(vec![Txn { request_id, op }], retry)
            .await?
            .remove(0);
        match &result.outcome {
            Outcome::Subscription {
                record: Some(record),
                rejection: None,
            } => Ok(Response::new(v1::SubscribeResponse {
                request_id: result.request_id.clone(),
                epoch: result.epoch,
                subscription: Some(subscription(record)),
            })),
            Outcome::Subscription {
                rejection: Some(rejection),
                ..
            } if rejection.code == RejectCode::UnknownSku => Err(Status::not_found(format!(
                "subscribe: unknown sku {}",
                rejection.sku
            ))),
            _ => Err(reused(&result, "a subscribe")),
        }
    }

    pub(super) async fn unsubscribe_unmarked(
        &self,
        request: Request<v1::UnsubscribeRequest>,
    ) -> Result<Response<v1::UnsubscribeResponse>, Status> {
        let retry = is_retry(&request);
        let r = request.into_inner();
        let field = "unsubscribe";
        let request_id = self.request_id(r.request_id, field)?;
        self.subscriber(&r.user, field)?;
        if r.sku == 0 {
            return Err(Status::invalid_argument(
                "unsubscribe: sku must be at least 1",
            ));
        }
        let op = Op::Unsubscribe {
            user: r.user,
            sku: r.sku,
            tag: tag(r.kind, field)?,
        };
        let result = self
            .run(vec![Txn { request_id, op }], retry)
            .await?
            .remove(0);
        match &result.outcome {
            Outcome::Subscription {
                record,
                rejection: None,
            } => Ok(Response::new(v1::UnsubscribeResponse {
                request_id: result.request_id.clone(),
                epoch: result.epoch,
                removed: record.is_some(),
            })),
            _ => Err(reused(&result, "an unsubscribe")),
        }
    }

    pub(super) async fn list_subscriptions_inner(
        &self,
        request: Request<v1::ListSubscriptionsRequest>,
    ) -> Result<Response<v1::ListSubscriptionsResponse>, Status> {
        let r = request.into_inner();
        self.subscriber(&r.user, "list_subscriptions")?;
        self.read_barrier(r.consistency, r.at_least_epoch).await?;
        let store = &self.node.store;
        let (epoch, records) = store
            .consistent(|epoch| {
                reads::user_subscriptions(store, &r.user, LIST_SUBSCRIPTIONS_MAX)
                    .map(|records| (epoch, records))
            })
            .map_err(internal)?;
        Ok(Response::new(v1::ListSubscriptionsResponse {
            subscriptions: records
                .iter()
                .filter(|s| r.include_ended || s.active())
                .map(subscription)
                .collect(),
            epoch,
        }))
    }
}
