-- An empty query string gives EmptyQueryResponse.
--- query

--- query
;
