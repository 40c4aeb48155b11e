"""The payment service: one Stripe PaymentIntent per order, charged at most once."""
