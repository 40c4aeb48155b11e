#!/usr/bin/env bash
# The three order scenarios against a running system (`make up` in another terminal):
# a paid order is CONFIRMED, a declined card is CANCELLED with its stock released, and an
# order for more than the stock is FAILED. Needs curl and python3 (for JSON).
set -euo pipefail
ORDERS=${ORDERS:-http://127.0.0.1:3004}
INVENTORY=${INVENTORY:-http://127.0.0.1:3006}

json() { python3 -c "import json,sys; d=json.load(sys.stdin); print(d$1)"; }

place() {  # place PRODUCT QUANTITY PAYMENT_METHOD -> orderId
    curl -fsS -X POST "$ORDERS/orders" -H 'Content-Type: application/json' -d @- <<JSON | json "['orderId']"
{"customerId": "c-42",
 "items": [{"productId": "$1", "quantity": $2, "unitPrice": 1999}],
 "currency": "usd",
 "paymentMethod": "$3"}
JSON
}

final() {  # final ORDER_ID -> the order once its saga has ended
    for _ in $(seq 1 100); do
        body=$(curl -fsS "$ORDERS/orders/$1")
        status=$(echo "$body" | json "['status']")
        if [ "$status" != PENDING ]; then echo "$body"; return; fi
        sleep 0.1
    done
    echo "order $1 still PENDING" >&2; return 1
}

show() {  # show TITLE ORDER_ID PRODUCT
    order=$(final "$2")
    echo "== $1: $(echo "$order" | json "['status']") (saga $(echo "$order" | json "['sagaStatus']"), reason $(echo "$order" | json "['reason']"))"
    echo "$order" | python3 -c "import json,sys; [print('   ', h['at'], h['sagaStatus'], h['event']) for h in json.load(sys.stdin)['history']]"
    echo "   stock of $3: $(curl -fsS "$INVENTORY/inventory/$3")"
}

curl -fsS -X PUT "$INVENTORY/inventory/sku-demo" -d '{"available": 5}' >/dev/null
show "happy path" "$(place sku-demo 2 pm_card_visa)" sku-demo
show "payment declined" "$(place sku-demo 1 pm_card_chargeCustomerFail)" sku-demo
show "out of stock" "$(place sku-demo 50 pm_card_visa)" sku-demo
