//! What the scheduler's property tests share: one seeded generator and one dataset.

#![allow(dead_code)]

use ordo_scheduler::*;

/// splitmix64: a small, seeded, well-mixed generator, so a failing seed reproduces.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// DCs `1..=dcs` in regions `dc % 4`, SKUs `1..=skus`, and `stock` units of each SKU at each
/// DC, as one epoch's transactions (the restocks last).
pub fn dataset(dcs: u32, skus: u32, stock: i64) -> Vec<Txn> {
    let mut txns = Vec::new();
    for dc in 1..=dcs {
        txns.push(Txn {
            request_id: format!("dc{dc}"),
            op: Op::UpsertDc(DcRecord {
                dc,
                name: "d".into(),
                lat_e6: 0,
                lon_e6: 0,
                region: dc % 4,
                active: true,
            }),
        });
    }
    for sku in 1..=skus {
        txns.push(Txn {
            request_id: format!("sku{sku}"),
            op: Op::UpsertItem(ItemRecord {
                sku,
                name: "i".into(),
                price_cents: 1,
            }),
        });
    }
    for dc in 1..=dcs {
        for sku in 1..=skus {
            txns.push(Txn {
                request_id: format!("stock{dc}-{sku}"),
                op: Op::Restock {
                    dc,
                    sku,
                    delta: stock,
                },
            });
        }
    }
    txns
}
