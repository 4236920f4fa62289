-- Waste collections with each agency's stream labels mapped to the conformed streams (seed
-- waste_streams); an unknown label is rejected rather than guessed.
with collections as (

    select * from {{ ref('int_waste_collection__districted') }}
    where {{ citylake_window() }}

),

streams as (

    select {{ citylake_normalize_alias('source_label') }} as label_key, stream
    from {{ ref('waste_streams') }}

),

final as (

    select
        {{ citylake_star_except(ref('int_waste_collection__districted'), ['stream', 'reject_reason'], 'collections') }},
        collections.stream as source_stream,
        streams.stream,
        coalesce(
            collections.reject_reason,
            case when streams.stream is null
                then 'unknown waste stream label ' || chr(39) || collections.stream || chr(39) || ' (add it to waste_streams)' end
        ) as reject_reason
    from collections
    left join streams on streams.label_key = {{ citylake_normalize_alias('collections.stream') }}

)

select * from final
