-- Every spelling that names a district, normalised (lower case, single spaces): the crosswalk seed
-- plus each district's own name and code, so a city only lists the variants.
with crosswalk as (

    select alias, district_code from {{ ref('district_crosswalk') }}

),

districts as (

    select code, name from {{ ref('city_districts') }}

),

aliases as (

    select alias, district_code from crosswalk
    union all
    select name, code from districts
    union all
    select code, code from districts

),

final as (

    select distinct
        {{ citylake_normalize_alias('alias') }} as alias_key,
        cast(district_code as {{ citylake_type('varchar') }}) as district_code
    from aliases
    where alias is not null

)

select * from final
