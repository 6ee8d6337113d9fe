// A system that cannot pull, receiving mes-events webhooks, in C# (ASP.NET Core).
//
// `mes-events push` POSTs each event as a CloudEvents HTTP request, signed as Standard Webhooks
// says. This receiver verifies the signature (StandardWebhooks package), refusing a tampered
// body or a timestamp more than 5 minutes off (401), decodes the CloudEvent with the official
// SDK (CloudNative.CloudEvents.AspNetCore; in batched mode each event of the batch), skips an
// event it already has (by source and id: an event comes again when an answer was lost),
// handles it, and answers 204. Answer anything else and the event (or the batch) is sent again
// later, its key waiting meanwhile; events of a batch already handled are skipped then.
//
//   WEBHOOK_SECRET=whsec_... dotnet run --urls http://0.0.0.0:8080
//
// (Not compiled in this repository's CI, which has no .NET SDK; the Python and JavaScript
// receivers beside it are run against real pushes in tests/it/push.rs.)
using System.Collections.Concurrent;
using CloudNative.CloudEvents;
using CloudNative.CloudEvents.AspNetCore;
using CloudNative.CloudEvents.SystemTextJson;
using StandardWebhooks;

var app = WebApplication.CreateBuilder(args).Build();
var webhook = new StandardWebhook(Environment.GetEnvironmentVariable("WEBHOOK_SECRET")
    ?? throw new InvalidOperationException("set WEBHOOK_SECRET to the whsec_ secret"));
var formatter = new JsonEventFormatter();
// Events handled (source#id): keep them in your database in production.
var seen = new ConcurrentDictionary<string, bool>();

app.MapPost("/hooks/mes", async (HttpRequest request) =>
{
    // The signature is over the raw body: read it, then let the SDK read it again.
    request.EnableBuffering();
    string body;
    using (var reader = new StreamReader(request.Body, leaveOpen: true))
    {
        body = await reader.ReadToEndAsync();
    }
    request.Body.Position = 0;
    try
    {
        webhook.Verify(body, request.Headers);
    }
    catch (WebhookVerificationException)
    {
        return Results.Unauthorized();
    }
    // One event, or in batched mode (application/cloudevents-batch+json) several, one per key.
    var events = request.IsCloudEventBatch()
        ? await request.ToCloudEventBatchAsync(formatter, Array.Empty<CloudEventAttribute>())
        : new[] { await request.ToCloudEventAsync(formatter) };
    foreach (var cloudEvent in events)
    {
        var key = $"{cloudEvent.Source}#{cloudEvent.Id}"; // the same on every retry
        if (seen.ContainsKey(key))
        {
            continue; // delivered again after a lost answer: already handled
        }
        Handle(cloudEvent);
        seen.TryAdd(key, true);
    }
    return Results.NoContent();
});

app.Run();

// Your integration goes here. Throw to have the event sent again later (answer 500).
static void Handle(CloudEvent e) =>
    Console.WriteLine($"{e.Id} {e.Type} {e.Subject} {e["sequence"]}");
