-- The indicator catalogue: what each indicator means, its unit, formula and the standard it follows.
select
    indicator_id,
    indicator_name,
    unit,
    formula,
    definition,
    standard,
    domain
from {{ ref('indicator_definitions') }}
