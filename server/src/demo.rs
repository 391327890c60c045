//! The demo dataset `ordo dev` loads on first start: DCs in real cities grouped into three
//! regions, 1,000 named SKUs with prices, and stock of every SKU at every DC. DC ids and SKU
//! ids start at 1. It goes through the log like any other write, so every replica has it.

use ordo_scheduler::{DcRecord, ItemRecord, Op, Txn};
use ordo_sequencer::Node;

/// (name, lat, lon, region)
pub const CITIES: &[(&str, f64, f64, u32)] = &[
    ("Berlin", 52.5200, 13.4050, 0),
    ("Paris", 48.8566, 2.3522, 0),
    ("London", 51.5074, -0.1278, 0),
    ("Madrid", 40.4168, -3.7038, 0),
    ("New York", 40.7128, -74.0060, 1),
    ("Chicago", 41.8781, -87.6298, 1),
    ("Toronto", 43.6532, -79.3832, 1),
    ("San Francisco", 37.7749, -122.4194, 1),
    ("Bengaluru", 12.9716, 77.5946, 2),
    ("Mumbai", 19.0760, 72.8777, 2),
    ("Singapore", 1.3521, 103.8198, 2),
    ("Tokyo", 35.6762, 139.6503, 2),
];

const PRODUCTS: &[&str] = &[
    "Potato Chips",
    "Tortilla Chips",
    "Cola",
    "Orange Soda",
    "Sparkling Water",
    "Still Water",
    "Whole Milk",
    "Oat Milk",
    "Greek Yogurt",
    "Cheddar",
    "Butter",
    "Eggs",
    "Sourdough Bread",
    "Bagels",
    "Croissants",
    "Bananas",
    "Apples",
    "Avocados",
    "Tomatoes",
    "Onions",
    "Basmati Rice",
    "Spaghetti",
    "Penne",
    "Olive Oil",
    "Peanut Butter",
    "Strawberry Jam",
    "Honey",
    "Ground Coffee",
    "Green Tea",
    "Dark Chocolate",
    "Ice Cream",
    "Frozen Pizza",
    "Instant Noodles",
    "Cereal",
    "Granola",
    "Toothpaste",
    "Shampoo",
    "Dish Soap",
    "Paper Towels",
    "Batteries",
];

const VARIANTS: &[&str] = &[
    "Classic",
    "Lite",
    "Organic",
    "Family Size",
    "Mini",
    "Spicy",
    "Sea Salt",
    "Smoked",
    "Vanilla",
    "Extra Large",
    "Budget",
    "Premium",
    "Gluten-Free",
    "Vegan",
    "Local",
    "Double Pack",
    "Party Pack",
    "Zero Sugar",
    "Whole Grain",
    "Fresh",
    "Frozen",
    "Imported",
    "Limited Edition",
    "Travel Size",
    "Bulk",
];

pub const SKUS: u32 = (PRODUCTS.len() * VARIANTS.len()) as u32;

pub fn item(sku: u32) -> ItemRecord {
    let i = (sku - 1) as usize;
    ItemRecord {
        sku,
        name: format!(
            "{} {}",
            VARIANTS[i % VARIANTS.len()],
            PRODUCTS[i / VARIANTS.len()]
        ),
        price_cents: 99 + (sku as i64 * 37) % 1_500,
    }
}

/// Initial on-hand stock of `sku` at `dc`: 20 to 200, varied.
pub fn initial_stock(dc: u32, sku: u32) -> i64 {
    20 + ((dc as i64) * 31 + (sku as i64) * 17) % 181
}

pub fn transactions() -> Vec<Txn> {
    let mut txns = Vec::new();
    for (i, &(name, lat, lon, region)) in CITIES.iter().enumerate() {
        let dc = i as u32 + 1;
        txns.push(Txn {
            request_id: format!("demo-dc-{dc}"),
            op: Op::UpsertDc(DcRecord {
                dc,
                name: name.to_string(),
                lat_e6: (lat * 1e6).round() as i32,
                lon_e6: (lon * 1e6).round() as i32,
                region,
                active: true,
            }),
        });
    }
    for sku in 1..=SKUS {
        txns.push(Txn {
            request_id: format!("demo-item-{sku}"),
            op: Op::UpsertItem(item(sku)),
        });
    }
    for dc in 1..=CITIES.len() as u32 {
        for sku in 1..=SKUS {
            txns.push(Txn {
                request_id: format!("demo-stock-{dc}-{sku}"),
                op: Op::Restock {
                    dc,
                    sku,
                    delta: initial_stock(dc, sku),
                },
            });
        }
    }
    txns
}

/// Loads the demo dataset through the sequencer, in chunks the queue can take.
pub async fn seed(node: &Node, queue_txns_max: usize) -> anyhow::Result<usize> {
    let txns = transactions();
    let count = txns.len();
    let chunk = (queue_txns_max / 2).clamp(1, 5_000);
    let mut rest = txns.into_iter().peekable();
    while rest.peek().is_some() {
        let part: Vec<Txn> = rest.by_ref().take(chunk).collect();
        let waits = node.sequencer.submit(part)?;
        for wait in waits {
            let result = wait
                .rx
                .await
                .map_err(|_| anyhow::anyhow!("the node stopped while loading demo data"))?
                .map_err(|e| anyhow::anyhow!("loading demo data: {e}"))?;
            if let Some(rejection) = result.outcome.rejection() {
                anyhow::bail!("demo data {} rejected: {rejection}", result.request_id);
            }
        }
    }
    Ok(count)
}
