//! What the benchmarks' events carry as `data`.

/// What each event's `data` is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Data {
    /// `{"seq": n, "pad": "xx…"}` with the caller's padding (the fault
    /// suite's 700 `x`: 724 bytes; `persist-bench`'s 1,000), which deflates
    /// to almost nothing (the figures before 2026-12-07 were measured with
    /// it).
    #[default]
    Pad,
    /// An order of about 1 KB, its ids, names, quantities and amounts
    /// varying from event to event: deflates about as real JSON does.
    Order,
}

const PRODUCTS: [&str; 8] = [
    "Stainless steel water bottle",
    "Merino wool hiking socks",
    "Noise-cancelling headphones",
    "Cast iron skillet, 28 cm",
    "Organic cotton t-shirt",
    "USB-C charging cable, 2 m",
    "Ceramic pour-over coffee dripper",
    "Waterproof trail running shoes",
];
const CITIES: [(&str, &str); 4] = [("Berlin", "DE"), ("Lyon", "FR"), ("Porto", "PT"), ("Utrecht", "NL")];

impl Data {
    /// The `data` of event number `seq`.
    pub fn of(self, seq: u64, pad: &str) -> serde_json::Value {
        match self {
            Self::Pad => serde_json::json!({"seq": seq, "pad": pad}),
            Self::Order => order(seq),
        }
    }
}

/// An order: 4 to 7 lines, the rest a customer, an address and a payment.
fn order(seq: u64) -> serde_json::Value {
    // A cheap mix of `seq`, so neighbouring events differ everywhere.
    let mut state = seq.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x2545_f491_4f6c_dd1d;
    let mut next = move |below: u64| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state % below
    };
    let lines: Vec<_> = (0..4 + next(4))
        .map(|_| {
            let product = next(PRODUCTS.len() as u64) as usize;
            serde_json::json!({
                "sku": format!("SKU-{:06}", next(1_000_000)),
                "name": PRODUCTS[product],
                "quantity": 1 + next(4),
                "unit_price": {"amount": 499 + next(20_000), "currency": "EUR"},
            })
        })
        .collect();
    let (city, country) = CITIES[next(CITIES.len() as u64) as usize];
    serde_json::json!({
        "seq": seq,
        "order_id": format!("ord_{:012x}", next(1 << 48)),
        "placed_at": format!("2026-12-0{}T{:02}:{:02}:{:02}Z", 1 + next(7), next(24), next(60), next(60)),
        "customer": {
            "id": format!("cus_{:08x}", next(1 << 32)),
            "email": format!("customer{}@example.com", next(100_000)),
            "shipping_address": {
                "line1": format!("{} Example Street", 1 + next(200)),
                "postal_code": format!("{:05}", next(100_000)),
                "city": city,
                "country": country,
            },
        },
        "lines": lines,
        "payment": {"method": "card", "status": "captured", "reference": format!("pi_{:016x}", next(u64::MAX))},
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orders_are_about_a_kilobyte_and_differ_from_event_to_event() {
        let sizes: Vec<usize> = (0..200).map(|seq| Data::Order.of(seq, "").to_string().len()).collect();
        let mean = sizes.iter().sum::<usize>() / sizes.len();
        assert!((900..=1_100).contains(&mean), "mean {mean}");
        assert!(sizes.iter().all(|size| (500..=1_600).contains(size)), "{sizes:?}");
        assert_ne!(Data::Order.of(1, ""), Data::Order.of(2, ""));
        assert_eq!(Data::Order.of(7, ""), Data::Order.of(7, ""));
        assert_eq!(Data::Pad.of(3, "xx"), serde_json::json!({"seq": 3, "pad": "xx"}));
    }
}
