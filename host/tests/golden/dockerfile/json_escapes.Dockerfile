FROM alpine
CMD ["q\"uote", "back\\slash", "sl\/ash", "\b\f\n\r\t", "\u0041\u00df\u20ac"]
CMD ["bad \x escape"]
CMD ["lone \ud800 surrogate"]
