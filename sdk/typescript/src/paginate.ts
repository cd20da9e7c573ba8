/** AIP-158 pagination as an async iterator: follows `next_page_token` until it is empty. */

/**
 * Yields every item of every page of a List call. `request.pageToken` is where it starts (empty: the first
 * page); pages are fetched lazily, one at a time, as the consumer iterates.
 */
export async function* paginate<Req extends { pageToken?: string }, Res extends { nextPageToken: string }, Item>(
  call: (request: Req) => Promise<Res>,
  request: Req,
  items: (response: Res) => readonly Item[],
): AsyncGenerator<Item, void, undefined> {
  let pageToken = request.pageToken ?? "";
  do {
    const response = await call({ ...request, pageToken });
    yield* items(response);
    pageToken = response.nextPageToken;
  } while (pageToken);
}
