//! The demo's plant: a simulator writing real MES activity through `mes_events.emit`.
//!
//! Writes only through `mes_events.emit`, as an MES would; never touches the outbox table.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::DemoError;
use crate::store::session as pg;
use crate::store::write;

/// A small plant: orders released → running → completed, material consumed and produced against
/// them, lots created and released, a master recipe approved, and a dryer's temperature ticking,
/// all through `mes_events.emit` in real transactions.
pub(super) async fn simulate(
    db_url: String,
    rate: u32,
    stop: CancellationToken,
) -> Result<u64, DemoError> {
    let mut s = pg::connect(&db_url, "mes-events demo plant").await?;
    let period = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
    let mut tick = tokio::time::interval(period);
    let mut emitted = 0u64;
    let mut n = 0u64;
    let scope =
        r#""hierarchyScope":{"site":"bsl","area":"gran","workCenter":"line2","workUnit":"dryer1"}"#;
    let signer = r#"{"id":"jkeller","name":"Dr. Jonas Keller","type":"user"}"#;
    let hash = r#"{"algorithm":"sha-256","value":"9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"}"#;
    while !stop.is_cancelled() {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => break,
        }
        n += 1;
        let order = format!("PO-{:05}", 1000 + n / 8);
        let lot = format!("LOT-{:05}", 1000 + n / 8);
        let doc = format!("MR-{:03}", n / 8 % 50);
        let (ty, key, data) = match n % 8 {
            0 => (
                "processorder.statuschanged",
                order.clone(),
                format!(
                    r#"{{"orderId":"{order}","previousStatus":null,"status":"released",{scope}}}"#
                ),
            ),
            1 => (
                "processorder.statuschanged",
                order.clone(),
                format!(
                    r#"{{"orderId":"{order}","previousStatus":"released","status":"running",{scope}}}"#
                ),
            ),
            2 => (
                "material.consumed",
                order.clone(),
                format!(
                    r#"{{"consumptionId":"C-{n}","processOrderId":"{order}","material":{{"materialDefinitionId":"M-100","lotId":"RAW-7"}},"quantity":{{"value":"12.5","uom":"KGM"}},{scope}}}"#
                ),
            ),
            3 => (
                "material.produced",
                order.clone(),
                format!(
                    r#"{{"productionId":"P-{n}","processOrderId":"{order}","material":{{"materialDefinitionId":"FG-200","lotId":"{lot}"}},"quantity":{{"value":"10","uom":"KGM"}},{scope}}}"#
                ),
            ),
            4 => (
                "stock.lotcreated",
                lot.clone(),
                format!(
                    r#"{{"lotId":"{lot}","materialDefinitionId":"FG-200","quantity":{{"value":"10","uom":"KGM"}},"status":"quarantine","origin":"produced",{scope}}}"#
                ),
            ),
            5 => (
                "processorder.statuschanged",
                order.clone(),
                format!(
                    r#"{{"orderId":"{order}","previousStatus":"running","status":"completed",{scope}}}"#
                ),
            ),
            6 => (
                "stock.lotstatuschanged",
                lot.clone(),
                format!(
                    r#"{{"lotId":"{lot}","materialDefinitionId":"FG-200","previousStatus":"quarantine","status":"released","reasonText":"QC release","hierarchyScope":{{"site":"bsl","area":"qa"}},"actor":{signer},"signatures":[{{"signer":{signer},"signedAt":"2026-11-23T08:00:00Z","meaning":"released"}}]}}"#
                ),
            ),
            _ => (
                "document.statuschanged",
                doc.clone(),
                format!(
                    r#"{{"documentId":"{doc}","documentType":"masterrecipe","version":"{}.0","previousStatus":"inreview","status":"approved","reasonText":"Review complete","contentHash":{hash},"actor":{signer},"signatures":[{{"signer":{signer},"signedAt":"2026-11-23T08:00:00Z","meaning":"approved"}}],"hierarchyScope":{{"site":"bsl"}}}}"#,
                    n / 8
                ),
            ),
        };
        let tx = s.client.transaction().await?;
        write::emit(
            &tx,
            &format!("io.mesevents.mes.{ty}.v1"),
            &key,
            &data,
            &Default::default(),
        )
        .await?;
        // Process variables ride along, as a historian feed would.
        let temp = 60.0 + (n as f64 / 10.0).sin() * 5.0;
        write::emit(
            &tx,
            "io.mesevents.mes.processvariable.changed.v1",
            "dryer1.temperature",
            &format!(r#"{{"variableId":"dryer1.temperature","value":{temp:.2},"uom":"CEL","quality":"good",{scope}}}"#),
            &Default::default(),
        )
        .await?;
        tx.commit().await?;
        emitted += 2;
    }
    Ok(emitted)
}
